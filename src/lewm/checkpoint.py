"""Self-describing, safe checkpoints: ``model.safetensors`` + ``config.json`` + ``normalizer.json``.

Safetensors holds tensors only, so loading a checkpoint never runs pickled code, and the
JSON beside it carries everything else needed to plan with the model (architecture and
action statistics), so loading never needs the training dataset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lewm.config import RunConfig
from lewm.data.normalize import Normalizer
from lewm.envs import UnknownEnvError, get_env_spec, proprio_columns
from lewm.io import atomic_path
from lewm.model.protocol import WorldModel
from lewm.registry import build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
NORMALIZER = "normalizer.json"
# The normalizer column that planning z-scores and inverts (one value per action dimension).
ACTION = "action"


class CheckpointError(ValueError):
    """A run folder that does not hold a usable checkpoint."""


def load_tensors_only(
    path: str | Path, error: type[ValueError], hint: str, mmap: bool = False
) -> Any:
    """``torch.load`` of an untrusted file: tensors and plain containers only, never code.

    Any failure to parse the bytes (torch raises a dozen kinds for damaged files) becomes one
    ``error`` that names the file, ends with ``hint`` (what the user can do), and for a
    refused object says which global it wanted.
    """
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except OSError as exc:
        if exc.errno is not None:
            raise  # missing or unreadable: the OS error names the file and the reason
        reason = str(exc)
    except Exception as exc:  # damaged bytes can fail anywhere in the unpickler
        text = str(exc).strip()
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found or "weights only" in text.lower():
            what = found.group(1) if found else "an object torch does not allow"
            raise error(
                f"{path}: refused to unpickle a non-tensor object ({what}); lewm loads only "
                f"tensors and plain containers, never code; {hint}"
            ) from None
        reason = text.splitlines()[0] if text else type(exc).__name__
    raise error(f"{path}: corrupt or truncated, not a readable torch file ({reason}); {hint}")


@dataclass
class Checkpoint:
    model: WorldModel
    config: RunConfig
    normalizer: Normalizer


def first_nonfinite(state: Mapping[str, torch.Tensor]) -> str | None:
    """The first key whose floating tensor holds a NaN or inf (weights, biases, BatchNorm
    statistics alike), or None. A diverged model plans with NaN costs that rank at random,
    so it is refused as early as it is seen rather than evaluated."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return key
    return None


def save_checkpoint(
    run_dir: str | Path, model: torch.nn.Module, cfg: RunConfig, norm: Normalizer
) -> None:
    """Write the three files of a checkpoint; non-finite weights are refused, so a diverged
    training cannot export."""
    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = first_nonfinite(state)
    if bad is not None:
        raise CheckpointError(
            f"{run_dir / WEIGHTS}: not written: tensor {bad} holds NaN or inf (training "
            "diverged; try a lower train.lr or train.precision=32-true)"
        )
    with atomic_path(run_dir / WEIGHTS) as tmp:
        mode = tmp.stat().st_mode
        metadata = {"format": "lewm", "kind": cfg.model.kind, "preset": cfg.preset}
        save_file(state, str(tmp), metadata=metadata)
        # safetensors replaces the file with an owner-only one; keep the usual permissions.
        tmp.chmod(mode)
    cfg.save(run_dir / CONFIG)
    norm.save(run_dir / NORMALIZER)


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, expected a run folder" if run_dir.exists() else "no such run folder"
        raise CheckpointError(f"{run_dir}: {what}")
    for name in (WEIGHTS, CONFIG, NORMALIZER):
        if not (run_dir / name).is_file():
            raise CheckpointError(
                f"{run_dir}: missing {name}; a checkpoint needs {WEIGHTS}, {CONFIG} and "
                f"{NORMALIZER} (is training finished? re-run `lewm train` to resume)"
            )
    try:
        cfg = RunConfig.load(run_dir / CONFIG)  # its errors start with the file's path
        norm = Normalizer.load(run_dir / NORMALIZER)
        norm.require(ACTION, cfg.model.action_dim, str(run_dir / NORMALIZER))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        get_env_spec(cfg.env)
    except UnknownEnvError as exc:
        raise CheckpointError(f"{run_dir / CONFIG}: field 'env': {exc}") from None
    if cfg.model.uses_proprio:
        try:
            norm.require(proprio_columns(cfg), cfg.model.proprio_dim, str(run_dir / NORMALIZER))
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    try:
        state = load_file(str(run_dir / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{run_dir / WEIGHTS}: not a readable safetensors file ({exc})"
        ) from None
    model = build_model(cfg.model)
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
    bad = first_nonfinite(state)
    if bad is not None:
        raise CheckpointError(f"{run_dir / WEIGHTS}: tensor {bad} holds NaN or inf")
    model.load_state_dict(state)
    model.to(device).eval()
    return Checkpoint(model=model, config=cfg, normalizer=norm)
