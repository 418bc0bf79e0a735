"""Training checkpoints that are either the old one or the new one, and that are never
unpickled beyond tensors and plain containers.

Lightning writes through an fsspec transaction whose temporary file lives in the system temp
folder; moving it into a run folder on another filesystem is a copy, so a kill during that
copy truncates ``last.ckpt`` and the run cannot resume. Here the bytes go to a temporary file
beside the target, are flushed to disk, and replace it with one atomic rename.

A run folder may come from someone else (shared, downloaded), so ``last.ckpt`` is untrusted
input: every read of it, Lightning's resume included, goes through
:func:`read_training_checkpoint`, which loads with ``weights_only=True``. A crafted pickle is
refused instead of run.
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch
from lightning.pytorch.plugins import TorchCheckpointIO

from lewm.checkpoint import load_tensors_only
from lewm.io import atomic_path


class TrainingCheckpointError(ValueError):
    """A ``last.ckpt`` that cannot be resumed from; the message says how to start over."""


def read_training_checkpoint(path: str | os.PathLike[str], mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint as tensors and plain containers, on the CPU.

    ``mmap`` maps the tensors instead of reading them (for metadata only).
    """
    start_over = "delete it (or use a new --out) to train from step 0"
    checkpoint = load_tensors_only(path, TrainingCheckpointError, start_over, mmap=mmap)
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise TrainingCheckpointError(
            f"{path}: not a Lightning training checkpoint (no global_step); {start_over}"
        )
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        # Serialised in memory first: torch reports a failed file write (a full disk) as a
        # RuntimeError without errno or path, Python's own write as the OSError it is.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Every resume reads through the safe reader, whatever Lightning asks for."""
        return read_training_checkpoint(path)
