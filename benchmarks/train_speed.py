"""Training throughput (frames/s) of a full step — forward, backward, gradient clipping, AdamW —
per preset and precision, for lewm's model and for a faithful reference of the authors' code.

The reference computes LeWM the way le-wm / stable-worldmodel train it (MODEL.md §2–7):

* encoder: Hugging Face ``transformers.ViTModel(ViTConfig(...), add_pooling_layer=False)``
  with ``attn_implementation="sdpa"``, trained from scratch, called with
  ``interpolate_pos_encoding=True``; its CLS token (``last_hidden_state[:, 0]``) is the output;
* projector / pred_proj: Linear → BatchNorm1d → GELU → Linear over the flattened (B·T) vectors;
* action encoder: float cast, Conv1d(kernel 1) → Linear → SiLU → Linear, over all T blocks;
* predictor: AdaLN-zero conditional blocks whose attention is ``F.scaled_dot_product_attention``
  with ``is_causal=True`` over q/k/v chunks of one bias-free Linear, then the final LayerNorm;
* loss: actions NaN → 0, ``(pred - target).pow(2).mean()`` plus λ·SIGReg, SIGReg batched over
  the T time steps and computed inside autocast as the authors do (bf16 projection matmul).

Precision is compared like with like: lewm under bf16 autocast against the reference under the
same autocast (Lightning's ``bf16`` precision is ``torch.autocast(dtype=torch.bfloat16)`` around
the forward pass), and lewm in float32 against the reference in float32. Both sides use the
same batch, thread count, gradient clipping (norm 1.0) and AdamW (lr 5e-5, weight decay 1e-3,
torch defaults otherwise, as the released config); both normalise the uint8 pixels inside the
step. Timed steps are interleaved — lewm, reference, reference, lewm, … — so that background
load falls on both alike; each side's figure is the median of its timed steps after warmup.

Before timing, the reference loads lewm's weights (its encoder through the official key map,
``lewm.interop.official.to_official``) and both compute the loss of one batch with the same
SIGReg directions and dropout off; the run fails if they disagree beyond tolerance.

Not a test: prints figures and writes JSON. Synthetic uint8 clips, so no dataset needed.
Needs ``transformers`` (a dev dependency); without it the benchmark says so and exits 1.
    python benchmarks/train_speed.py --presets tiny paper --precision bf16 fp32 --threads 1
"""

from __future__ import annotations

import copy
import dataclasses
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from types import ModuleType

import torch
import torch.nn.functional as F
from common import preset_parser, write_rows
from torch import Tensor, nn

from lewm.config import ModelConfig, preset
from lewm.device import resolve_device
from lewm.interop.official import to_official
from lewm.model import LeWM
from lewm.model.lewm import IMAGENET_MEAN, IMAGENET_STD

# Paper: 8 clips × 4 frames = 32 frames of 224 px a step: seconds a step on one CPU core,
# so that a run fits several interleaved repetitions in minutes.
DEFAULT_BATCH = {"tiny": 64, "paper": 8}
# Relative loss tolerance against the float32 reference on the same batch and directions:
# float32 differs only in summation order; bf16 autocast rounds every matmul input to 8 bits.
LOSS_RTOL = {"fp32": 1e-4, "bf16": 3e-2}
LR, WEIGHT_DECAY, CLIP = 5e-5, 1e-3, 1.0  # MODEL.md §7
REFERENCE = (
    "transformers.ViTModel (sdpa) encoder + the authors' projector, action encoder, "
    "AdaLN-zero predictor (causal SDPA) and batched SIGReg, same precision as lewm"
)


def require_transformers() -> ModuleType:
    try:
        import transformers
    except ImportError as exc:
        raise SystemExit(
            "train_speed: the reference encoder is transformers.ViTModel, but transformers is "
            f"not importable ({exc}); install the dev extra: pip install -e '.[dev]'"
        ) from exc
    return transformers


# ---------------------------------------------------------------- the reference model
class RefAttention(nn.Module):
    """The authors' predictor attention: LayerNorm, one bias-free qkv Linear, causal SDPA."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dropout = heads, dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        drop = self.dropout if self.training else 0.0
        q, k, v = (
            part.reshape(b, t, self.heads, -1).transpose(1, 2)  # 'b t (h d) -> b h t d'
            for part in self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        )
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        return self.to_out(out.transpose(1, 2).reshape(b, t, -1))


class RefFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, dim), nn.Dropout(dropout),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class RefConditionalBlock(nn.Module):
    """AdaLN-zero block (DiT style, per-token conditioning)."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp: int, dropout: float) -> None:
        super().__init__()
        self.attn = RefAttention(dim, heads, dim_head, dropout)
        self.mlp = RefFeedForward(dim, mlp, dropout)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class RefTransformer(nn.Module):
    """The authors' Transformer; input/cond/output projections are identities at LeWM's
    sizes (all widths equal), kept so the call sequence is theirs."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            RefConditionalBlock(dim, cfg.pred_heads, cfg.pred_dim_head, cfg.pred_mlp,
                                cfg.pred_dropout)
            for _ in range(cfg.pred_depth)
        )  # fmt: skip
        self.input_proj, self.cond_proj = nn.Identity(), nn.Identity()
        self.output_proj = nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        x, c = self.input_proj(x), self.cond_proj(c)
        for block in self.layers:
            x = block(x, c)
        return self.output_proj(self.norm(x))


class RefPredictor(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.history, cfg.embed_dim))
        self.dropout = nn.Dropout(0.0)  # emb_dropout of the released config
        self.transformer = RefTransformer(cfg)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        x = self.dropout(x + self.pos_embedding[:, : x.shape[1]])
        return self.transformer(x, c)


class RefEmbedder(nn.Module):
    """The authors' action encoder (``Embedder``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv1d(cfg.block_dim, 10, kernel_size=1)
        self.embed = nn.Sequential(
            nn.Linear(10, cfg.action_hidden), nn.SiLU(), nn.Linear(cfg.action_hidden, cfg.embed_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x.float().permute(0, 2, 1)).permute(0, 2, 1)
        return self.embed(x)


class RefMLP(nn.Module):
    """Projector / pred_proj: Linear → BatchNorm1d → GELU → Linear on (N, D)."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(), nn.Linear(hidden, out)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class RefSIGReg(nn.Module):
    """The authors' SIGReg: Epps–Pulley over random directions, batched over time steps,
    with no float cast (under bf16 autocast the projection matmul runs in bf16).

    Directions come from ``generator`` so that the loss check can match lewm's; the authors
    draw from the global RNG, at the same cost. Buffers are non-persistent only so that
    lewm's state dict loads as is."""

    def __init__(self, knots: int, num_proj: int) -> None:
        super().__init__()
        self.num_proj = num_proj
        t = torch.linspace(0, 3, knots, dtype=torch.float32)
        dt = 3 / (knots - 1)
        weights = torch.full((knots,), 2 * dt, dtype=torch.float32)
        weights[[0, -1]] = dt
        window = torch.exp(-t.square() / 2.0)
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("phi", window, persistent=False)
        self.register_buffer("weights", weights * window, persistent=False)

    def forward(self, proj: Tensor, generator: torch.Generator) -> Tensor:
        a = torch.randn(proj.size(-1), self.num_proj, generator=generator,
                        device=generator.device).to(proj.device)  # fmt: skip
        a = a.div_(a.norm(p=2, dim=0))
        x_t = (proj @ a).unsqueeze(-1) * self.t
        err = (x_t.cos().mean(-3) - self.phi).square() + x_t.sin().mean(-3).square()
        statistic = (err @ self.weights) * proj.size(-2)
        return statistic.mean()


class RefLeWM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTModel

        self.cfg = cfg
        vit = ViTConfig(
            hidden_size=cfg.enc_dim, num_hidden_layers=cfg.enc_depth,
            num_attention_heads=cfg.enc_heads, intermediate_size=cfg.enc_mlp,
            patch_size=cfg.patch_size, image_size=cfg.image_size, attn_implementation="sdpa",
        )  # fmt: skip
        self.encoder = ViTModel(vit, add_pooling_layer=False)
        if self.encoder.config._attn_implementation != "sdpa":
            raise SystemExit(
                f"train_speed: ViTModel runs {self.encoder.config._attn_implementation!r} "
                "attention, not 'sdpa'"
            )
        self.predictor = RefPredictor(cfg)
        self.action_encoder = RefEmbedder(cfg)
        self.projector = RefMLP(cfg.enc_dim, cfg.proj_hidden, cfg.embed_dim)
        self.pred_proj = RefMLP(cfg.embed_dim, cfg.proj_hidden, cfg.embed_dim)
        self.sigreg = RefSIGReg(cfg.sigreg_knots, cfg.sigreg_projections)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def loss(self, pixels: Tensor, action: Tensor, generator: torch.Generator) -> Tensor:
        """The authors' ``lejepa_forward``; pixel normalisation (their data transform) is done
        here because lewm's step does it too."""
        cfg = self.cfg
        pixels = (pixels.float() / 255 - self.mean) / self.std
        action = torch.nan_to_num(action, 0.0)
        b = pixels.shape[0]
        out = self.encoder(pixels.flatten(0, 1), interpolate_pos_encoding=True)
        emb = self.projector(out.last_hidden_state[:, 0]).reshape(b, -1, cfg.embed_dim)
        act_emb = self.action_encoder(action)
        preds = self.predictor(emb[:, : cfg.history], act_emb[:, : cfg.history])
        pred = self.pred_proj(preds.flatten(0, 1)).reshape(b, -1, cfg.embed_dim)
        pred_loss = (pred - emb[:, cfg.num_preds :]).pow(2).mean()
        return pred_loss + cfg.sigreg_lambda * self.sigreg(emb.transpose(0, 1), generator)


# ---------------------------------------------------------------- measuring
def autocast(precision: str, device: torch.device) -> torch.autocast | nullcontext:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_step(
    loss_fn: Callable[[torch.Generator], Tensor], model: nn.Module, device: torch.device
) -> Callable[[], float]:
    """One Lightning-style step (zero_grad, forward, backward, clip, AdamW); returns seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(torch.Generator().manual_seed(0))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def interleaved(
    ours: Callable[[], float], ref: Callable[[], float], steps: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Warm both up, then alternate ours/ref with the order flipped each round (AB BA AB …)."""
    for _ in range(warmup):
        ours()
        ref()
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    for i in range(steps):
        order = (("ours", ours), ("ref", ref)) if i % 2 == 0 else (("ref", ref), ("ours", ours))
        for name, step in order:
            times[name].append(step())
    return times["ours"], times["ref"]


def check_losses(
    name: str, cfg: ModelConfig, state: dict[str, Tensor], pixels: Tensor, blocks: Tensor,
    precisions: list[str], device: torch.device,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Loss of one batch, same directions, dropout off, for both models at each precision."""
    check = dataclasses.replace(cfg, pred_dropout=0.0)
    ours, ref = LeWM(check).to(device), RefLeWM(check).to(device)
    ours.load_state_dict(state)
    ref.load_state_dict(to_official(state, cfg.enc_depth))
    losses: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for precision in sorted(set(precisions) | {"fp32"}):
            with autocast(precision, device):
                g = torch.Generator().manual_seed(2)
                lewm_loss = ours.loss(pixels, blocks, g)["loss"].item()
                ref_loss = ref.loss(pixels, blocks, torch.Generator().manual_seed(2)).item()
            losses[precision] = {"lewm": lewm_loss, "reference": ref_loss}
    anchor = losses["fp32"]["reference"]
    for precision, pair in losses.items():
        for side, loss in pair.items():
            if abs(loss - anchor) > LOSS_RTOL[precision] * abs(anchor):
                raise SystemExit(
                    f"{name} {side} {precision}: loss {loss:.6f} differs from the float32 "
                    f"reference's {anchor:.6f} by more than {LOSS_RTOL[precision]:.0e} relative"
                )
    return losses


def bench_preset(
    name: str, batch: int, precisions: list[str], steps: int, warmup: int, device: torch.device
) -> list[dict]:
    cfg = preset(name).model
    torch.manual_seed(0)
    ours = LeWM(cfg).to(device).train()
    with torch.no_grad():  # zero-initialised gates would hide the predictor from the check
        for p in ours.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    state = ours.state_dict()
    ref = RefLeWM(cfg).to(device).train()
    ref.load_state_dict(to_official(state, cfg.enc_depth))
    gen = torch.Generator().manual_seed(1)
    s = cfg.image_size
    pixels = torch.randint(0, 256, (batch, cfg.num_steps, 3, s, s), generator=gen,
                           dtype=torch.uint8).to(device)  # fmt: skip
    blocks = torch.randn(batch, cfg.num_steps, cfg.block_dim, generator=gen).to(device)
    losses = check_losses(name, cfg, state, pixels, blocks, precisions, device)
    frames = batch * cfg.num_steps

    rows = []
    for precision in precisions:
        model_a, model_b = copy.deepcopy(ours), copy.deepcopy(ref)

        def run_ours(g: torch.Generator, m: LeWM = model_a, p: str = precision) -> Tensor:
            with autocast(p, device):
                return m.loss(pixels, blocks, g)["loss"]

        def run_ref(g: torch.Generator, m: RefLeWM = model_b, p: str = precision) -> Tensor:
            with autocast(p, device):
                return m.loss(pixels, blocks, g)

        t_ours, t_ref = interleaved(
            train_step(run_ours, model_a, device), train_step(run_ref, model_b, device),
            steps, warmup,
        )  # fmt: skip
        rows.append(_row(name, precision, batch, frames, t_ours, t_ref, losses, device))
        del model_a, model_b
    return rows


def _row(name: str, precision: str, batch: int, frames: int, t_ours: list[float],
         t_ref: list[float], losses: dict[str, dict[str, float]], device: torch.device) -> dict:
    import transformers

    ours, ref = statistics.median(t_ours), statistics.median(t_ref)
    row = {
        "preset": name, "precision": precision, "batch": batch, "frames_per_step": frames,
        "threads": torch.get_num_threads(), "device": str(device),
        "lewm_seconds_per_step": ours, "reference_seconds_per_step": ref,
        "lewm_frames_per_second": frames / ours, "reference_frames_per_second": frames / ref,
        "speedup_lewm_vs_reference": ref / ours,
        "speedup_paired_median": statistics.median(
            r / o for o, r in zip(t_ours, t_ref, strict=True)
        ),
        "lewm_step_seconds": t_ours, "reference_step_seconds": t_ref,
        "lewm_loss": losses[precision]["lewm"], "reference_loss": losses[precision]["reference"],
        "reference": REFERENCE, "optimizer": f"AdamW lr {LR} wd {WEIGHT_DECAY}, clip {CLIP}",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(),
    }  # fmt: skip
    print(f"{name:6s} {precision:5s} batch {batch:3d} x {frames // batch} frames, "
          f"{row['threads']} thread(s): lewm {ours:.3f} s/step ({frames / ours:7.1f} frames/s), "
          f"reference {ref:.3f} s/step ({frames / ref:7.1f} frames/s): "
          f"x{row['speedup_lewm_vs_reference']:.2f} (paired x{row['speedup_paired_median']:.2f})",
          flush=True)  # fmt: skip
    return row


def main() -> None:
    parser = preset_parser(__doc__, "train_speed")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"],
                        choices=sorted(LOSS_RTOL))  # fmt: skip
    parser.add_argument("--steps", type=int, default=7, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--batch", type=int, default=None,
                        help="clips per step (default: tiny 64, paper 8)")  # fmt: skip
    args = parser.parse_args()
    require_transformers()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for name in args.presets:
        batch = args.batch or DEFAULT_BATCH.get(name, 16)
        rows += bench_preset(name, batch, args.precision, args.steps, args.warmup, device)
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
