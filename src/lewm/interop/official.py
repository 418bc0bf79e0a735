"""The released LeWM checkpoints (``weights.pt`` + ``config.json``, DATAFORMAT.md §5) in and out.

Outside the encoder, lewm's state-dict keys are the official ones already. The official
encoder is a Hugging Face ``ViTModel`` (transformers 4.x key names) with separate
query/key/value projections, where lewm's ViT has one fused qkv Linear; the explicit table in
:func:`encoder_key_map` bridges the two, so neither direction needs ``transformers`` (whose
5.x release renamed these keys, DATAFORMAT.md §5.2).

Every check runs before anything is written: an import or export either produces a complete
folder or leaves none behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lewm import hub
from lewm.checkpoint import first_nonfinite, load_checkpoint, load_tensors_only, save_checkpoint
from lewm.config import ConfigError, ModelConfig, RunConfig, preset
from lewm.data import Normalizer, open_store
from lewm.envs import get_env_spec
from lewm.io import atomic_folder, read_json_object
from lewm.model.config import ACTION_SMOOTHED_DIM
from lewm.registry import build_model

WEIGHTS = "weights.pt"
CONFIG = "config.json"

# stable-pretraining's ``vit_hf`` sizes: (hidden, layers, heads, intermediate).
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (192, 12, 3, 768),
    "small": (384, 12, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
}
# The official action encoder's hidden width is mlp_scale × emb_dim; 4 is its default.
DEFAULT_MLP_SCALE = 4
_BATCHNORM = {"_target_": "torch.nn.BatchNorm1d", "_partial_": True}
# ModelConfig fields read straight from one official field: (official field, type).
_DIRECT: dict[str, tuple[str, type]] = {
    "image_size": ("encoder.image_size", int),
    "patch_size": ("encoder.patch_size", int),
    "pred_depth": ("predictor.depth", int),
    "pred_heads": ("predictor.heads", int),
    "pred_dim_head": ("predictor.dim_head", int),
    "pred_mlp": ("predictor.mlp_dim", int),
    "pred_dropout": ("predictor.dropout", float),
    "history": ("predictor.num_frames", int),
}
# Where every other ModelConfig field comes from, to name it when its value is refused.
_DERIVED = {
    **{name: "encoder.size" for name in ("enc_dim", "enc_depth", "enc_heads", "enc_mlp")},
    "embed_dim": "projector.output_dim",
    "proj_hidden": "projector.hidden_dim",
    "frameskip": "action_encoder.input_dim",
    "action_hidden": "action_encoder.mlp_scale",
}


class OfficialCheckpointError(ValueError):
    """An official-layout checkpoint (or a request to write one) that cannot be used."""


def encoder_key_map(depth: int) -> dict[str, tuple[str, ...]]:
    """lewm encoder key → the official keys whose tensors it holds, concatenated on dim 0.

    Only the fused qkv maps to several keys: its output rows are q, then k, then v, each
    head-major, which is exactly how Hugging Face lays out its separate projections.
    """
    table: dict[str, tuple[str, ...]] = {
        "encoder.cls_token": ("encoder.embeddings.cls_token",),
        "encoder.pos_embed": ("encoder.embeddings.position_embeddings",),
        "encoder.norm.weight": ("encoder.layernorm.weight",),
        "encoder.norm.bias": ("encoder.layernorm.bias",),
    }
    ours_theirs = {
        "norm1": "layernorm_before",
        "attn.proj": "attention.output.dense",
        "norm2": "layernorm_after",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    for p in ("weight", "bias"):
        table[f"encoder.patch_embed.{p}"] = (f"encoder.embeddings.patch_embeddings.projection.{p}",)
        for n in range(depth):
            ours, theirs = f"encoder.blocks.{n}", f"encoder.encoder.layer.{n}"
            table[f"{ours}.attn.qkv.{p}"] = tuple(
                f"{theirs}.attention.attention.{part}.{p}" for part in ("query", "key", "value")
            )
            for mine, hf in ours_theirs.items():
                table[f"{ours}.{mine}.{p}"] = (f"{theirs}.{hf}.{p}",)
    return table


def _split(state: Mapping[str, Tensor], depth: int) -> Iterator[tuple[str, Tensor]]:
    """(official key, view of the lewm tensor) pairs, in lewm's key order."""
    table = encoder_key_map(depth)
    for key, tensor in state.items():
        targets = table.get(key, (key,))
        parts = tensor.chunk(len(targets), dim=0) if len(targets) > 1 else (tensor,)
        yield from zip(targets, parts, strict=True)


def to_official(state: Mapping[str, Tensor], depth: int) -> dict[str, Tensor]:
    """A lewm state dict → the official one (fused qkv split into query/key/value).

    Every tensor is a CPU copy, not a view: torch.save would otherwise store the whole fused
    qkv once per part.
    """
    return {
        key: part.detach().cpu().clone(memory_format=torch.contiguous_format)
        for key, part in _split(state, depth)
    }


def official_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Every official key of the model ``cfg`` describes, with its shape.

    Computed from a lewm model built on the meta device (no memory, no init cost), mapped
    the same way an export maps it, so import and export cannot disagree on the layout.
    """
    with torch.device("meta"):
        state = build_model(cfg).state_dict()
    return {key: part.shape for key, part in _split(state, cfg.enc_depth)}


def from_official(
    official: Mapping[str, Tensor], cfg: ModelConfig, source: str = WEIGHTS
) -> dict[str, Tensor]:
    """The official state dict → lewm's, after checking its key set and every shape."""
    expected = official_shapes(cfg)
    missing = [k for k in expected if k not in official]
    extra = sorted(set(official) - set(expected))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise OfficialCheckpointError(
            f"{source}: missing key {missing[0]!r}{more}; config.json implies {len(expected)} keys"
        )
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise OfficialCheckpointError(
            f"{source}: unexpected key {extra[0]!r}{more}; config.json implies {len(expected)} keys"
        )
    for key, shape in expected.items():
        if official[key].shape != shape:
            raise OfficialCheckpointError(
                f"{source}: key {key!r} has shape {tuple(official[key].shape)}, "
                f"config.json implies {tuple(shape)}"
            )
    state: dict[str, Tensor] = {}
    for ours, theirs in encoder_key_map(cfg.enc_depth).items():
        parts = [official[k] for k in theirs]
        state[ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    for key, tensor in official.items():
        if not key.startswith("encoder."):
            state[key] = tensor
    return state


def read_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """``weights.pt`` as a plain dict of tensors; nothing but tensors is ever unpickled."""
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"{path}: no such file")
    obj = load_tensors_only(
        path, OfficialCheckpointError, "expected the official weights.pt (a dict of tensors)"
    )
    if not isinstance(obj, Mapping):
        raise OfficialCheckpointError(
            f"{path}: expected a state dict (a dict of tensors), found {type(obj).__name__}"
        )
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise OfficialCheckpointError(
                f"{path}: key {key!r} holds a {type(value).__name__}, expected a tensor"
            )
    return dict(obj)


_REQUIRED = object()


def _field(
    cfg: Mapping[str, Any], dotted: str, kind: type, source: str, default: Any = _REQUIRED
) -> Any:
    """One typed value of the nested config, or a clear error naming its dotted path."""
    node: Any = cfg
    for name in dotted.split("."):
        if not isinstance(node, Mapping) or name not in node:
            if default is not _REQUIRED:
                return default
            raise OfficialCheckpointError(f"{source}: field {dotted!r}: missing")
        node = node[name]
    if kind is float and isinstance(node, int) and not isinstance(node, bool):
        node = float(node)
    # JSON true/false are Python bools, which are also ints: never accept one as a number.
    if not isinstance(node, kind) or isinstance(node, bool):
        raise OfficialCheckpointError(
            f"{source}: field {dotted!r}: expected {kind.__name__}, found {node!r}"
        )
    return node


def model_config_from_official(
    cfg: Mapping[str, Any], action_dim: int, source: str = CONFIG
) -> ModelConfig:
    """The official Hydra model config → lewm's ModelConfig.

    ``action_encoder.input_dim`` is frameskip × action_dim, so the raw action width (from the
    dataset) is what splits it. Fields lewm's model cannot represent (different widths for
    the two projectors, a predictor with its own hidden width) are refused, not ignored.
    """
    if "encoder" not in cfg and isinstance(cfg.get("model"), Mapping):
        cfg = cfg["model"]
    size = _field(cfg, "encoder.size", str, source)
    if size not in VIT_SIZES:
        raise OfficialCheckpointError(
            f"{source}: field 'encoder.size': unknown ViT size {size!r}; "
            f"known: {', '.join(VIT_SIZES)}"
        )
    enc_dim, enc_depth, enc_heads, enc_mlp = VIT_SIZES[size]
    embed_dim = _field(cfg, "projector.output_dim", int, source)
    proj_hidden = _field(cfg, "projector.hidden_dim", int, source)
    must_equal = {
        "projector.input_dim": enc_dim,
        "predictor.input_dim": embed_dim,
        "predictor.hidden_dim": embed_dim,
        "predictor.output_dim": embed_dim,
        "pred_proj.input_dim": embed_dim,
        "pred_proj.output_dim": embed_dim,
        "pred_proj.hidden_dim": proj_hidden,
        "action_encoder.emb_dim": embed_dim,
    }
    for dotted, value in must_equal.items():
        found = _field(cfg, dotted, int, source)
        if found != value:
            raise OfficialCheckpointError(
                f"{source}: field {dotted!r} is {found}; lewm's model needs {value} here"
            )
    smoothed = _field(cfg, "action_encoder.smoothed_dim", int, source, ACTION_SMOOTHED_DIM)
    if smoothed != ACTION_SMOOTHED_DIM:
        raise OfficialCheckpointError(
            f"{source}: field 'action_encoder.smoothed_dim' is {smoothed}; "
            f"lewm's action encoder has {ACTION_SMOOTHED_DIM}"
        )
    mlp_scale = _field(cfg, "action_encoder.mlp_scale", int, source, DEFAULT_MLP_SCALE)
    block_dim = _field(cfg, "action_encoder.input_dim", int, source)
    if action_dim < 1 or block_dim % action_dim:
        raise OfficialCheckpointError(
            f"{source}: field 'action_encoder.input_dim' is {block_dim}, not a multiple of the "
            f"dataset's action width {action_dim}; is --data the checkpoint's environment?"
        )
    model = ModelConfig(
        **{ours: _field(cfg, theirs, kind, source) for ours, (theirs, kind) in _DIRECT.items()},
        enc_dim=enc_dim,
        enc_depth=enc_depth,
        enc_heads=enc_heads,
        enc_mlp=enc_mlp,
        embed_dim=embed_dim,
        proj_hidden=proj_hidden,
        action_dim=action_dim,
        frameskip=block_dim // action_dim,
        action_hidden=mlp_scale * embed_dim,
    )
    # Sizes are checked (and the model's memory bounded) before anything is allocated.
    try:
        model.validate()
    except ConfigError as exc:
        ours = (exc.field or "").removeprefix("model.")
        theirs = _DIRECT[ours][0] if ours in _DIRECT else _DERIVED.get(ours)
        where = f"field {theirs!r}: " if theirs else ""
        raise OfficialCheckpointError(f"{source}: {where}{exc}") from None
    return model


def official_config(m: ModelConfig) -> dict[str, Any]:
    """lewm's ModelConfig → the official resolved Hydra config, ``_target_`` entries included."""
    size = next(
        (
            s
            for s, dims in VIT_SIZES.items()
            if dims == (m.enc_dim, m.enc_depth, m.enc_heads, m.enc_mlp)
        ),
        None,
    )
    if size is None:
        raise OfficialCheckpointError(
            f"encoder width/depth/heads/mlp ({m.enc_dim}, {m.enc_depth}, {m.enc_heads}, "
            f"{m.enc_mlp}) is no official ViT size ({', '.join(VIT_SIZES)}); "
            "the official code could not build it"
        )
    if m.action_hidden % m.embed_dim:
        raise OfficialCheckpointError(
            f"action_hidden {m.action_hidden} is not a multiple of embed_dim {m.embed_dim}; "
            "the official action encoder's hidden width is mlp_scale × emb_dim"
        )
    if m.enc_dim != m.embed_dim:
        raise OfficialCheckpointError(
            f"enc_dim {m.enc_dim} differs from embed_dim {m.embed_dim}; the official config "
            "ties both to embed_dim"
        )

    def mlp(in_dim: int) -> dict[str, Any]:
        return {
            "_target_": "module.MLP",
            "input_dim": in_dim,
            "output_dim": m.embed_dim,
            "hidden_dim": m.proj_hidden,
            "norm_fn": dict(_BATCHNORM),
        }

    return {
        "_target_": "jepa.JEPA",
        "embed_dim": m.embed_dim,
        "history_size": m.history,
        "encoder": {
            "_target_": "stable_pretraining.backbone.utils.vit_hf",
            "size": size,
            "patch_size": m.patch_size,
            "image_size": m.image_size,
            "pretrained": False,
            "use_mask_token": False,
        },
        "predictor": {
            "_target_": "module.ARPredictor",
            "num_frames": m.history,
            "input_dim": m.embed_dim,
            "hidden_dim": m.embed_dim,
            "output_dim": m.embed_dim,
            "depth": m.pred_depth,
            "heads": m.pred_heads,
            "mlp_dim": m.pred_mlp,
            "dim_head": m.pred_dim_head,
            "dropout": m.pred_dropout,
            "emb_dropout": 0.0,
        },
        "action_encoder": {
            "_target_": "module.Embedder",
            "input_dim": m.block_dim,
            "smoothed_dim": ACTION_SMOOTHED_DIM,
            "emb_dim": m.embed_dim,
            "mlp_scale": m.action_hidden // m.embed_dim,
        },
        "projector": mlp(m.enc_dim),
        "pred_proj": mlp(m.embed_dim),
    }


def _load_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "file", OfficialCheckpointError)


def import_official(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    data: str | os.PathLike[str],
    env: str | None = None,
) -> RunConfig:
    """An official checkpoint folder → a lewm run folder (safetensors + config + normalizer).

    The official checkpoint carries no action statistics (the reference refits them from the
    dataset at every run), so they are fitted here from ``data`` — use the training file to
    get the scale the model was trained with. The environment is taken from the data file or
    ``env``; the official files do not name it, so it must then be given. ``out`` must not
    exist or be empty: overwriting another run's files would leave a folder that belongs to
    neither.
    """
    src, out = hub.resolve(src, folder=True), Path(out)
    if env is not None:
        get_env_spec(env)  # an unknown name is refused before any file is read
    official_cfg = _load_json(src / CONFIG)
    with open_store(data, cache="none") as store:
        env_name = env or store.env_name
        if env_name is None:
            raise OfficialCheckpointError(
                f"{store.path}: the file does not name its environment; pass --env NAME"
            )
        if env is None:
            get_env_spec(env_name)  # the name the file gives must be known too
        model_cfg = model_config_from_official(official_cfg, store.action_dim, str(src / CONFIG))
        if store.image_size != model_cfg.image_size:
            raise OfficialCheckpointError(
                f"{store.path}: images are {store.image_size}x{store.image_size} but the "
                f"checkpoint expects {model_cfg.image_size}x{model_cfg.image_size}"
            )
        norm = Normalizer.fit(store, ("action",))
        data_path = hub.record(data) if hub.is_hub_path(data) else str(store.path.resolve())
    weights = read_weights(src / WEIGHTS)
    state = from_official(weights, model_cfg, str(src / WEIGHTS))
    bad = first_nonfinite(weights)
    if bad is not None:
        raise OfficialCheckpointError(f"{src / WEIGHTS}: key {bad!r} holds NaN or inf")
    cfg = preset("paper")
    cfg.env, cfg.model = env_name, model_cfg
    cfg.data.path = data_path
    model = build_model(model_cfg)
    model.load_state_dict(state)
    with atomic_folder(out, replace=False) as tmp:
        save_checkpoint(tmp, model, cfg, norm)
    return cfg


def export_official(run_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> int:
    """A lewm run folder → ``weights.pt`` + ``config.json`` the official code loads.

    Returns the number of tensors written (303 for the paper model).
    """
    ckpt = load_checkpoint(run_dir)
    if ckpt.config.model.kind != "lewm":
        raise OfficialCheckpointError(
            f"{run_dir}: a {ckpt.config.model.kind} run; only LeWM runs have an official "
            "checkpoint layout"
        )
    config = official_config(ckpt.config.model)
    state = to_official(ckpt.model.state_dict(), ckpt.config.model.enc_depth)
    with atomic_folder(out, replace=False) as tmp:
        torch.save(state, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return len(state)
