"""DINOv2 ViT-S/14, the frozen image encoder of the DINO-WM-style baseline (BASELINES.md §5).

Written from the spec rather than imported, so the baseline needs neither ``transformers`` nor
torch hub's network code: a pre-norm ViT with LayerScale, LayerNorm eps 1e-6, exact GELU and
a final LayerNorm. Parameter names are those of the torch-hub state dict, so the published
``dinov2_vits14_pretrain.pth`` loads strict; the Hugging Face ``facebook/dinov2-small`` file
is renamed on the way in (:func:`hf_to_hub`).

The model never trains here; freezing is the caller's job (``eval()``,
``requires_grad_(False)``, ``torch.no_grad()``), as it is for DINO-WM's encoder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lewm.model.vit import MLP, SelfAttention

DINOV2_LN_EPS = 1e-6
SAFETENSORS_FILE = "model.safetensors"
# HF's Dinov2Model splits the hub's fused qkv projection into three, in this row order.
QKV_PARTS = ("query", "key", "value")

_HINT = (
    "expected torch hub's dinov2_vits14_pretrain.pth, or facebook/dinov2-small's "
    "model.safetensors (or the folder holding it)"
)


class DINOv2WeightsError(ValueError):
    """A DINOv2 weights file that is missing, unreadable, or does not fit the model."""


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class LayerScale(nn.Module):
    """Per-channel residual-branch gain; 1.0 at init, learned values in the checkpoint."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=DINOV2_LN_EPS)
        self.attn = SelfAttention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=DINOV2_LN_EPS)
        self.mlp = MLP(dim, mlp)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DINOv2(nn.Module):
    """ImageNet-normalised images (N, 3, H, W) → patch tokens (N, (H/p)·(W/p), dim).

    The tokens are taken after the final LayerNorm with the CLS token dropped, i.e. HF's
    ``last_hidden_state[:, 1:]``, which is what DINO-WM predicts. The defaults are ViT-S/14
    (22,056,576 parameters, the unused mask token included so the hub file loads strict).
    """

    def __init__(
        self,
        dim: int = 384,
        depth: int = 12,
        heads: int = 6,
        mlp: int = 1536,
        patch_size: int = 14,
        pretrain_size: int = 518,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"DINOv2 width {dim} is not divisible by its {heads} heads")
        self.patch_size = patch_size
        self.pretrain_grid = pretrain_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pretrain_grid**2, dim))
        # Replaces masked patches in DINOv2's self-distillation; unused here, but kept so the
        # published state dict loads with strict=True.
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(dim, patch_size)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=DINOV2_LN_EPS)
        # Placeholder init only (layers keep torch's defaults): the model exists to run
        # published weights, and re-initialising 22M values would just slow construction.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, images: Tensor) -> Tensor:
        n, _, height, width = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"DINOv2 input {height}×{width} is not a multiple of patch {p}")
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = x + self.position_embedding(height // p, width // p)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1:]

    def position_embedding(self, h: int, w: int) -> Tensor:
        """The (1, 1 + h·w, dim) position embedding for an h×w patch grid.

        The pretrained table covers the 37×37 grid of 518 px; other grids resample it bicubic
        (align_corners=False) in float32 to exactly ``size=(h, w)``, CLS row untouched. That is
        transformers ≥ 4.47's path, which the paper's code ran; torch hub and older
        transformers ask for ``scale_factor=(h + 0.1)/37`` instead and give other numbers
        (up to 0.08 apart at 224 px, BASELINES.md §5). Recomputed every call, so weights loaded
        later are never shadowed by a stale copy.
        """
        g = self.pretrain_grid
        if (h, w) == (g, g):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = patch_pos.shape[-1]
        grid = patch_pos.reshape(1, g, g, dim).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        patch_pos = grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h * w, dim)
        return torch.cat([cls_pos, patch_pos], dim=1)


# ----------------------------------------------------------------------------------------
# Hugging Face ↔ torch-hub key names (BASELINES.md §5). One table serves both directions.

_TOP_LEVEL = {  # hub prefix → HF prefix
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.": "embeddings.patch_embeddings.projection.",
    "norm.": "layernorm.",
}
_PER_BLOCK = {  # hub "blocks.{i}." suffix prefix → HF "encoder.layer.{i}." suffix prefix
    "norm1.": "norm1.",
    "attn.proj.": "attention.output.dense.",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.": "norm2.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
    "ls2.gamma": "layer_scale2.lambda1",
}
_HUB_BLOCK = re.compile(r"blocks\.(\d+)\.(.*)")
_HF_BLOCK = re.compile(r"encoder\.layer\.(\d+)\.(.*)")
_HF_QKV = re.compile(r"attention\.attention\.(query|key|value)\.(weight|bias)")


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    return None


def _hub_to_hf_names(key: str) -> list[str]:
    """The HF key(s) holding a hub tensor: three for a fused qkv, else one; [] if unknown."""
    block = _HUB_BLOCK.fullmatch(key)
    if block is None:
        name = _rename(key, _TOP_LEVEL)
        return [name] if name else []
    i, rest = block.groups()
    if rest in ("attn.qkv.weight", "attn.qkv.bias"):
        kind = rest.rsplit(".", 1)[1]
        return [f"encoder.layer.{i}.attention.attention.{part}.{kind}" for part in QKV_PARTS]
    name = _rename(rest, _PER_BLOCK)
    return [f"encoder.layer.{i}.{name}"] if name else []


def _hf_to_hub_name(key: str) -> tuple[str, int | None] | None:
    """(hub key, row block of the fused qkv or None) for an HF key; None if unknown."""
    block = _HF_BLOCK.fullmatch(key)
    if block is None:
        inverse = {hf: hub for hub, hf in _TOP_LEVEL.items()}
        name = _rename(key, inverse)
        return (name, None) if name else None
    i, rest = block.groups()
    qkv = _HF_QKV.fullmatch(rest)
    if qkv:
        return f"blocks.{i}.attn.qkv.{qkv.group(2)}", QKV_PARTS.index(qkv.group(1))
    name = _rename(rest, {hf: hub for hub, hf in _PER_BLOCK.items()})
    return (f"blocks.{i}.{name}", None) if name else None


def hf_to_hub(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An HF ``Dinov2Model`` state dict renamed to torch-hub keys, q/k/v fused into qkv.

    The fused rows are query, key, value in that order (how the hub's attention splits them).
    Keys it does not know pass through unchanged, so a strict load still reports them. A
    leading ``dinov2.`` (HF's task models) should be stripped by the caller.
    """
    out: dict[str, Tensor] = {}
    parts: dict[str, dict[int, Tensor]] = {}
    for key, tensor in state.items():
        mapped = _hf_to_hub_name(key)
        if mapped is None:
            out[key] = tensor
        elif mapped[1] is None:
            out[mapped[0]] = tensor
        else:
            parts.setdefault(mapped[0], {})[mapped[1]] = tensor
    for key, pieces in parts.items():
        if len(pieces) != len(QKV_PARTS):
            have = ", ".join(QKV_PARTS[j] for j in sorted(pieces))
            raise KeyError(f"{key}: needs query, key and value; the state dict has only {have}")
        out[key] = torch.cat([pieces[j] for j in range(len(QKV_PARTS))], dim=0)
    return out


# ----------------------------------------------------------------------------------------
# Loading


def load_dinov2_weights(model: DINOv2, path: str | Path) -> None:
    """Load published DINOv2 weights into ``model``: the torch-hub ``.pth``, HF's
    ``model.safetensors``, or an HF snapshot folder holding it.

    The format is told from the file's first bytes, not its name, and either key naming is
    accepted in either container (HF's ``pytorch_model.bin`` is a pickle with HF names). The
    whole file is checked first (keys, shapes, finiteness), so a bad file changes nothing;
    every problem is one :class:`DINOv2WeightsError` line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / SAFETENSORS_FILE).is_file():
            raise DINOv2WeightsError(f"{path}: folder holds no {SAFETENSORS_FILE}; {_HINT}")
        path = path / SAFETENSORS_FILE
    elif not path.exists():
        raise DINOv2WeightsError(f"{path}: no such file or folder; {_HINT}")

    state = _read_state(path)
    if state and all(key.startswith("dinov2.") for key in state):
        state = {key[len("dinov2."):]: tensor for key, tensor in state.items()}
    # Tell the naming by which one more keys follow; odd keys then show up as unexpected.
    hf_count = sum(_hf_to_hub_name(key) is not None for key in state)
    hf_names = hf_count > sum(bool(_hub_to_hf_names(key)) for key in state)
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    if hf_names:
        expected = _hf_shapes(expected)
    _check(path, state, expected)
    model.load_state_dict(hf_to_hub(state) if hf_names else state, strict=True)


def _read_state(path: Path) -> dict[str, Tensor]:
    with path.open("rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if _looks_like_safetensors(head, size):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError, or OSError/ValueError on damaged bytes
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DINOv2WeightsError(
                f"{path}: corrupt or truncated safetensors file ({reason}); {_HINT}"
            ) from None
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
        from lewm.checkpoint import load_tensors_only

        state = load_tensors_only(path, DINOv2WeightsError, _HINT)
        if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
        ):
            raise DINOv2WeightsError(
                f"{path}: holds a {type(state).__name__}, not a plain state dict of named "
                f"tensors; {_HINT}"
            )
        return dict(state)
    raise DINOv2WeightsError(
        f"{path}: neither a torch .pth (zip or pickle) nor a safetensors file; {_HINT}"
    )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """Safetensors starts with an 8-byte little-endian header length, then a JSON object."""
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


def _hf_shapes(hub_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Expected HF key → shape, from the model's hub shapes (a fused qkv splits into thirds)."""
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in hub_shapes.items():
        names = _hub_to_hf_names(key)
        part = (shape[0] // len(names), *shape[1:]) if len(names) > 1 else shape
        out.update((name, part) for name in names)
    return out


def _check(path: Path, state: Mapping[str, Tensor], expected: Mapping[str, tuple]) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        problems = []
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            problems.append(f"missing key {missing[0]}{more}")
        if unexpected:
            more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
            problems.append(f"unexpected key {unexpected[0]}{more}")
        raise DINOv2WeightsError(
            f"{path}: {'; '.join(problems)} (not weights for this DINOv2 size); {_HINT}"
        )
    for key in sorted(state):
        tensor = state[key]
        if tuple(tensor.shape) != expected[key]:
            raise DINOv2WeightsError(
                f"{path}: tensor {key} has shape {tuple(tensor.shape)}, expected "
                f"{expected[key]} (not weights for this DINOv2 size); {_HINT}"
            )
        if not tensor.is_floating_point():
            raise DINOv2WeightsError(f"{path}: tensor {key} is {tensor.dtype}, not floating point")
    for key in sorted(state):
        if not bool(torch.isfinite(state[key]).all()):
            raise DINOv2WeightsError(f"{path}: tensor {key} holds NaN or inf")
