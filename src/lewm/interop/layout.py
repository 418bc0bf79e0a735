"""Writing columns in the official files' storage layout, so that lewm's data can be read by
the reference code and official-layout reading can be tested and measured on known data."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from lewm.io import atomic_path


def write_official_layout(
    path: str | os.PathLike[str], columns: Mapping[str, np.ndarray]
) -> Path:
    """The older official writer (DATAFORMAT.md §1): images Blosc (lz4, level 5, byte
    shuffle) in (100, H, W, C) chunks, other per-row columns in (1000, …) chunks,
    ``ep_len``/``ep_offset`` contiguous, libver "latest". Columns are written as given,
    unchecked, so that malformed files can be made on purpose too."""
    blosc = hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver="latest") as f:
        for name, value in columns.items():
            value = np.asarray(value)
            if name in ("ep_len", "ep_offset"):
                f.create_dataset(name, data=value)
                continue
            rows = 100 if value.ndim >= 3 else 1000
            f.create_dataset(
                name,
                data=value,
                chunks=(rows, *value.shape[1:]),
                maxshape=(None, *value.shape[1:]),
                **(blosc if value.ndim >= 3 else {}),
            )
    return path
