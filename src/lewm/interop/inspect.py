"""What an episode file holds and what is wrong with it, before hours are spent training on it.

The official files (DATAFORMAT.md §1–2) differ between writers — episode-index spelling,
Blosc-compressed chunks, extra columns — and a file that breaks the layout's invariants (one
NaN action at the end of every episode and nowhere else) trains without error on wrong
clips. :func:`inspect_dataset` reports the contents and lists every such problem; whether
lewm can read the file at all is decided by :class:`~lewm.data.EpisodeStore` itself, whose
refusal is reported as one more problem rather than re-implemented here.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lewm import hub
from lewm.data.lance_store import LanceEpisodeStore, is_lance_path
from lewm.data.shards import find_shards
from lewm.data.store import (
    EPISODE_COLUMNS,
    INDEX_COLUMNS,
    DataFileError,
    EpisodeStore,
    unreadable,
)

# HDF5 filter ids → names people know them by (32001 needs hdf5plugin).
_FILTER_NAMES = {1: "gzip", 2: "shuffle", 3: "fletcher32", 32000: "lzf", 32001: "blosc"}
# Bytes read at a time when counting non-finite values: a float pixels column can be larger
# than RAM.
_BLOCK_BYTES = 64 * 2**20


@dataclass
class ColumnInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...] | None
    compression: str


@dataclass
class DatasetReport:
    path: str
    env: str | None = None
    episodes: int = 0
    rows: int = 0
    episode_length: tuple[int, float, int] | None = None  # min, mean, max
    episode_column: str | None = None
    image_shape: tuple[int, int] | None = None
    action_dim: int = 0
    action_mean: list[float] = field(default_factory=list)
    action_std: list[float] = field(default_factory=list)
    action_min: list[float] = field(default_factory=list)
    action_max: list[float] = field(default_factory=list)
    columns: list[ColumnInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _compression(ds: h5py.Dataset) -> str:
    plist = ds.id.get_create_plist()
    names = []
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        names.append(_FILTER_NAMES.get(code, f"filter {code}"))
    return "+".join(names) or "none"


def inspect_dataset(path: str | os.PathLike[str]) -> DatasetReport:
    """Contents and layout problems of an episode file.

    Raises DataFileError, with a one-line message, only for what cannot be inspected at all:
    a missing file, a file that is not HDF5, a truncated or corrupt one, or one that another
    process holds open for writing. A folder is inspected as a Lance dataset, which is
    refused the same way when lewm cannot read it. ``hf://`` files are read from the Hugging
    Face cache (:mod:`lewm.hub`).
    """
    path = hub.resolve(path, folder=is_lance_path(path))
    if not path.exists():
        if shards := find_shards(path):
            raise DataFileError(
                f"{path}: a dataset of {len(shards)} shard files; inspect each of them "
                f"({shards[0].name} ... {shards[-1].name})"
            )
        raise DataFileError(f"{path}: no such file")
    if path.is_dir():
        return _inspect_lance(path)
    if not h5py.is_hdf5(path):
        raise DataFileError(f"{path}: not an HDF5 file (expected an episode .h5 file)")
    report = DatasetReport(path=str(path))
    try:
        with h5py.File(path, "r") as f:
            _read_contents(f, report)
    except (OSError, KeyError, RuntimeError) as exc:  # h5py's errors for a damaged file
        raise unreadable(path, exc) from None
    try:
        EpisodeStore(path, cache="none").close()
    except DataFileError as exc:
        report.problems.append(f"lewm cannot read it: {exc}")
    return report


def _inspect_lance(path: Path) -> DatasetReport:
    """What a Lance dataset holds. Lance has no chunks or HDF5 filters to report, only how
    frames are encoded (the platform's JPEG is lossy); a dataset lewm cannot read is refused
    with the store's own one-line message, as the store checks what the HDF5 checks here do."""
    with LanceEpisodeStore(path, cache="none") as store:
        lengths = store.ep_len
        report = DatasetReport(
            path=str(path),
            env=store.env_name,
            episodes=store.num_episodes,
            rows=store.num_rows,
            episode_length=(int(lengths.min()), float(lengths.mean()), int(lengths.max())),
            episode_column=store.episode_column,
            image_shape=(store.image_size, store.image_size),
        )
        for name in store.columns:
            part = store.read(name, slice(0, 0))
            rows = store.num_episodes if name in INDEX_COLUMNS else store.num_rows
            shape = (rows, *part.shape[1:])
            encoding = store.encoding(name)
            report.columns.append(ColumnInfo(name, shape, str(part.dtype), None, encoding))
        action = store.read("action", slice(None))
        _action_statistics(action, report, store.ep_len, store.ep_offset)
    return report


def _read_contents(f: h5py.File, report: DatasetReport) -> None:
    """Fill ``report`` from the open file: what it holds and what breaks the layout."""
    problems = report.problems
    env = f.attrs.get("env")
    report.env = None if env is None else str(env.decode() if isinstance(env, bytes) else env)
    for name, obj in sorted(f.items()):
        if isinstance(obj, h5py.Dataset):
            report.columns.append(
                ColumnInfo(name, obj.shape, str(obj.dtype), obj.chunks, _compression(obj))
            )
        else:
            problems.append(
                f"group {name!r}: the layout has no groups (the official writer flattens "
                f"'/' to '_'); lewm ignores it"
            )
    # Column checks look only at datasets with rows: a group or a scalar where a column
    # should be is already a problem above, or EpisodeStore's refusal below.
    cols = {n: o for n, o in f.items() if isinstance(o, h5py.Dataset) and o.ndim >= 1}
    if "ep_len" in cols and "ep_offset" in cols:
        ep_len = cols["ep_len"][()].astype(np.int64)
        ep_offset = cols["ep_offset"][()].astype(np.int64)
        report.episodes = int(ep_len.size)
        if ep_len.size:
            report.episode_length = (int(ep_len.min()), float(ep_len.mean()), int(ep_len.max()))
    else:
        ep_len = ep_offset = None
    if "pixels" in cols:
        report.rows = int(cols["pixels"].shape[0])
        if cols["pixels"].ndim == 4:
            report.image_shape = (int(cols["pixels"].shape[1]), int(cols["pixels"].shape[2]))
    _check_episode_index(cols, report, ep_len)
    if "action" in cols and cols["action"].ndim == 2 and cols["action"].dtype.kind == "f":
        _action_statistics(cols["action"][()], report, ep_len, ep_offset)
    _check_finite(f, report, ep_len, ep_offset)


def _check_episode_index(
    cols: dict[str, h5py.Dataset], report: DatasetReport, ep_len: np.ndarray | None
) -> None:
    present = [c for c in EPISODE_COLUMNS if c in cols]
    if not present:
        report.problems.append(
            f"no episode index column (expected one of {', '.join(EPISODE_COLUMNS)})"
        )
        return
    report.episode_column = present[0]
    if len(present) > 1:
        report.problems.append(f"both {' and '.join(present)} present; lewm uses {present[0]!r}")
    if ep_len is None or ep_len.sum() != cols[present[0]].shape[0]:
        return  # the row-count mismatch itself is reported by EpisodeStore
    expected = np.repeat(np.arange(ep_len.size), ep_len)
    bad = np.flatnonzero(cols[present[0]][()] != expected)
    if bad.size:
        report.problems.append(
            f"column {present[0]!r} disagrees with ep_len/ep_offset at {bad.size} rows "
            f"(first: row {bad[0]})"
        )
    if "step_idx" in cols and cols["step_idx"].shape[0] == expected.size:
        within = np.arange(expected.size) - np.repeat(np.cumsum(ep_len) - ep_len, ep_len)
        bad = np.flatnonzero(cols["step_idx"][()] != within)
        if bad.size:
            report.problems.append(
                f"column 'step_idx' does not count 0, 1, ... within episodes at {bad.size} "
                f"rows (first: row {bad[0]})"
            )


def _action_statistics(
    action: np.ndarray,
    report: DatasetReport,
    ep_len: np.ndarray | None,
    ep_offset: np.ndarray | None,
) -> None:
    report.action_dim = int(action.shape[1])
    nan_row = np.isnan(action).any(axis=1)
    valid = action[np.isfinite(action).all(axis=1)].astype(np.float64)
    if valid.shape[0] >= 2:
        report.action_mean = valid.mean(axis=0).tolist()
        report.action_std = valid.std(axis=0, ddof=1).tolist()
        report.action_min = valid.min(axis=0).tolist()
        report.action_max = valid.max(axis=0).tolist()
    if ep_len is None or ep_offset is None or ep_len.sum() != action.shape[0] or not ep_len.size:
        return
    last = ep_offset + ep_len - 1
    if (last < 0).any() or (last >= action.shape[0]).any():
        return  # broken offsets are reported by EpisodeStore
    not_nan_last = int((~np.isnan(action[last]).all(axis=1)).sum())
    if not_nan_last:
        report.problems.append(
            f"column 'action': {not_nan_last} of {ep_len.size} episodes lack the NaN last row "
            "(the layout marks the action after the final observation with NaN)"
        )
    elsewhere = nan_row.copy()
    elsewhere[last] = False
    if elsewhere.any():
        report.problems.append(
            f"column 'action': NaN in {int(elsewhere.sum())} rows that are not an episode's "
            f"last (first: row {int(np.flatnonzero(elsewhere)[0])}); clips through them "
            "would train on zeros"
        )


def _check_finite(
    f: h5py.File, report: DatasetReport, ep_len: np.ndarray | None, ep_offset: np.ndarray | None
) -> None:
    """Count NaN and inf in every float column: a state column with them fails evaluation
    far from the file, and inf actions make every training step non-finite.

    NaN is the layout's "no value" only at an episode boundary: the action after the final
    observation (placed by :func:`_action_statistics`, so only inf is counted for action),
    the reward before the first action in the official files. A column whose NaNs all lie
    in first rows, or all in last rows, is therefore not flagged for them.
    """
    for name, ds in sorted(f.items()):
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fc" or ds.ndim == 0:
            continue
        width = max(1, int(np.prod(ds.shape[1:])))
        step = max(1, _BLOCK_BYTES // (ds.dtype.itemsize * width))
        nan_rows = np.zeros(ds.shape[0], dtype=bool)
        inf_rows = np.zeros(ds.shape[0], dtype=bool)
        nan = inf = 0
        for start in range(0, ds.shape[0], step):
            block = ds[start : start + step].reshape(-1, width)
            nan += int(np.isnan(block).sum())
            inf += int(np.isinf(block).sum())
            nan_rows[start : start + block.shape[0]] = np.isnan(block).any(axis=1)
            inf_rows[start : start + block.shape[0]] = np.isinf(block).any(axis=1)
        if name == "action" or _at_one_boundary(nan_rows, ep_len, ep_offset):
            nan, nan_rows = 0, np.zeros_like(nan_rows)
        bad = np.flatnonzero(nan_rows | inf_rows)
        if bad.size:
            counts = f"{inf} inf" if name == "action" else f"{nan} NaN and {inf} inf"
            report.problems.append(
                f"column {name!r}: {counts} values (first: row {bad[0]}); expected finite numbers"
            )


def _at_one_boundary(
    rows: np.ndarray, ep_len: np.ndarray | None, ep_offset: np.ndarray | None
) -> bool:
    """Whether the flagged ``rows`` are all episodes' first rows, or all their last rows."""
    if ep_len is None or ep_offset is None or ep_len.sum() != rows.size or not ep_len.size:
        return False
    flagged = np.flatnonzero(rows)
    return bool(np.isin(flagged, ep_offset).all() or np.isin(flagged, ep_offset + ep_len - 1).all())
