"""Checkpoint files that are either the old one or the new one, never half of either.

Lightning writes through an fsspec transaction whose temporary file lives in the system temp
folder; moving it into a run folder on another filesystem is a copy, so a kill during that
copy truncates ``last.ckpt`` and the run cannot resume. Here the bytes go to a temporary file
beside the target, are flushed to disk, and replace it with one atomic rename.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins import TorchCheckpointIO

from lewm.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())


def remove_partial_checkpoints(folder: Path) -> None:
    """Delete temporary files a killed process left behind (see :func:`lewm.io.atomic_path`)."""
    for part in folder.glob(".*.ckpt.*.part"):
        part.unlink(missing_ok=True)
