"""Self-describing, safe checkpoints: ``model.safetensors`` + ``config.json`` + ``normalizer.json``.

Safetensors holds tensors only, so loading a checkpoint never runs pickled code, and the
JSON beside it carries everything else needed to plan with the model (architecture and
action statistics), so loading never needs the training dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lewm.config import ConfigError, RunConfig
from lewm.data.normalize import Normalizer
from lewm.io import atomic_path
from lewm.model import LeWM

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
NORMALIZER = "normalizer.json"


class CheckpointError(ValueError):
    """A run folder that does not hold a usable checkpoint."""


@dataclass
class Checkpoint:
    model: LeWM
    config: RunConfig
    normalizer: Normalizer


def save_checkpoint(run_dir: str | Path, model: LeWM, cfg: RunConfig, norm: Normalizer) -> None:
    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "lewm", "preset": cfg.preset})
    cfg.save(run_dir / CONFIG)
    norm.save(run_dir / NORMALIZER)


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    for name in (WEIGHTS, CONFIG, NORMALIZER):
        if not (run_dir / name).is_file():
            raise CheckpointError(
                f"{run_dir}: missing {name}; a checkpoint needs {WEIGHTS}, {CONFIG} and "
                f"{NORMALIZER} (is training finished? re-run `lewm train` to resume)"
            )
    try:
        cfg = RunConfig.load(run_dir / CONFIG)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{run_dir / CONFIG}: {exc}") from None
    try:
        norm = Normalizer.load(run_dir / NORMALIZER)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        state = load_file(str(run_dir / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{run_dir / WEIGHTS}: not a readable safetensors file ({exc})"
        ) from None
    model = LeWM(cfg.model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{run_dir / WEIGHTS}: weights do not match {CONFIG}; "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{run_dir / WEIGHTS}: tensor {key} has shape {tuple(tensor.shape)}, "
                f"{CONFIG} implies {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state)
    model.to(device).eval()
    return Checkpoint(model=model, config=cfg, normalizer=norm)
