"""A dataset split into shard files, read as one.

A cluster job array writes ``data-00000-of-00008.h5`` ... (one file per job, each a
complete file in the official layout, so any one can also be opened by itself);
``open_store("data.h5")`` then reads them as the single file an unsharded collection
with the same seed would have written.

``open_store`` lives here rather than in ``store.py`` so that the imports go one way:
this module builds on :class:`~lewm.data.store.EpisodeStore`, which knows nothing of shards.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from lewm import hub
from lewm.data.lance_store import LanceEpisodeStore, is_lance_path
from lewm.data.store import INDEX_COLUMNS, DataFileError, EpisodeStore, _cache_mode

# Shard attributes that differ between the shards of one dataset; every other attribute
# (env, resolution, seed, total_episodes...) must agree.
PER_SHARD_ATTRS = ("shard_index", "first_episode")


def shard_path(path: str | os.PathLike[str], index: int, count: int) -> Path:
    """File of shard ``index`` of ``count`` of the dataset ``path``.

    ``data.h5`` → ``data-00003-of-00008.h5``, beside it: the zero padding makes the shards
    of one dataset list in order.
    """
    path = Path(path)
    return path.with_name(f"{path.stem}-{index:05d}-of-{count:05d}{path.suffix}")


def find_shards(path: str | os.PathLike[str]) -> list[Path]:
    """The shard files of the dataset ``path`` in shard order; [] when there are none.

    Raises DataFileError when shards exist but are not one complete set: a dataset silently
    missing a block of episodes would train on a different distribution.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    name = re.compile(rf"{re.escape(path.stem)}-\d{{5,}}-of-(\d{{5,}}){re.escape(path.suffix)}")
    matches = [m for p in sorted(path.parent.iterdir()) if (m := name.fullmatch(p.name))]
    if not matches:
        return []
    counts = {int(m[1]) for m in matches}
    if len(counts) > 1:
        raise DataFileError(
            f"{path}: shard files of different shard counts: {', '.join(m[0] for m in matches)}"
        )
    count = counts.pop()
    shards = [shard_path(path, i, count) for i in range(count)]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise DataFileError(
            f"{path}: {', '.join(missing)} {verb} missing "
            f"(found {count - len(missing)} of {count} shards)"
        )
    return shards


def open_store(path: str | os.PathLike[str], cache: str = "auto") -> EpisodeStore:
    """The dataset ``path``, whether one file or a set of shard files.

    Every reader of a dataset (training, evaluation, analysis, conversion) opens it through
    here, so a sharded collection is used unchanged wherever one file would be. ``path``
    that exists is always read as that one file; only a missing ``path`` with shard files
    beside it becomes a :class:`ShardedEpisodeStore`. Neither found: the plain store's
    "no such file" error. ``cache`` is as for :class:`EpisodeStore`. An ``hf://`` path is a
    file of a Hugging Face repository, read from the library's cache (:mod:`lewm.hub`).

    A Lance dataset (a ``.lance`` folder, or any folder with Lance's ``_versions/`` inside)
    becomes a :class:`~lewm.data.lance_store.LanceEpisodeStore`, as does any other folder,
    whose error then says what a dataset folder should hold.
    """
    path = hub.resolve(path, folder=is_lance_path(path))
    if is_lance_path(path) or path.is_dir():
        return LanceEpisodeStore(path, cache=cache)
    if not Path(path).exists() and find_shards(path):
        return ShardedEpisodeStore(path, cache=cache)
    return EpisodeStore(path, cache=cache)


class ShardedEpisodeStore(EpisodeStore):
    """The shard files of ``path`` (``data-00000-of-00008.h5`` ...) read as one dataset.

    Episodes follow shard order and rows are global, exactly as in the unsharded file of
    the same collection. Each shard is an :class:`EpisodeStore` of its own, which does the
    validation, the caching and the per-process handles; this class only checks that the
    shards belong together and maps global rows to (shard, local row). A shard stays a
    valid file by itself, its episode column counting from 0, so that column is renumbered
    here, as ``ep_offset`` is.
    """

    def __init__(self, path: str | os.PathLike[str], cache: str = "auto") -> None:
        self.path = Path(path)
        self.cache = _cache_mode(cache)
        paths = find_shards(self.path)
        if not paths:
            example = shard_path(self.path, 0, 2).name
            raise DataFileError(f"{self.path}: no shard files such as {example}")
        self._shards: list[EpisodeStore] = []
        try:
            for shard in paths:
                # Pixels are cached below for all shards or none, by the dataset's total size.
                self._shards.append(EpisodeStore(shard, cache="none"))
            self._combine()
        except BaseException:
            self.close()
            raise

    def _combine(self) -> None:
        """Check that the shards belong together, then index them as one dataset."""
        first = self._shards[0]
        layout = _layout(first)
        episodes = 0
        for shard in self._shards:
            other = _layout(shard)
            for key in dict.fromkeys([*layout, *other]):
                if layout.get(key) != other.get(key):
                    raise DataFileError(
                        f"{self.path}: shards disagree on {key}: {first.path.name} has "
                        f"{layout.get(key)}, {shard.path.name} has {other.get(key)}"
                    )
            start = shard.attrs.get("first_episode", episodes)
            if start != episodes:
                raise DataFileError(
                    f"{shard.path}: holds the episodes from {start} on, but the shards before "
                    f"it hold {episodes} (shards of different collections?)"
                )
            episodes += shard.num_episodes

        self.columns = first.columns
        self.attrs = {k: v for k, v in first.attrs.items() if k not in PER_SHARD_ATTRS}
        self.env_name = first.env_name
        self.episode_column = first.episode_column
        self.image_size = first.image_size
        self.action_dim = first.action_dim
        self.ep_len = np.concatenate([s.ep_len for s in self._shards])
        self.ep_offset = np.concatenate([[0], np.cumsum(self.ep_len)[:-1]])
        self.num_episodes = int(self.ep_len.shape[0])
        self.num_rows = int(self.ep_len.sum())
        self._row_start = np.cumsum([0, *(s.num_rows for s in self._shards)])
        self._episode_start = np.cumsum([0, *(s.num_episodes for s in self._shards)]).tolist()
        self._schema = _schema(first)
        # ep_len and ep_offset are indexed by episode, not row: serve the global ones.
        self._ram = {
            name: getattr(self, name).astype(self._schema[name][0]) for name in INDEX_COLUMNS
        }
        for array in self._ram.values():
            array.flags.writeable = False
        if self._cache_pixels(self.num_rows * self.image_size**2 * 3):  # uint8 (N, S, S, 3)
            for shard in self._shards:
                shard._hold("pixels")

    @property
    def cached(self) -> bool:
        """Whether ``pixels`` is served from RAM."""
        return all(shard.cached for shard in self._shards)

    def _read_stored(self, column: str, rows: np.ndarray | slice) -> np.ndarray:
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.num_rows)
            if step == 1:
                return self._read_range(column, start, stop)
            rows = np.arange(start, stop, step)
        return self._read_rows(column, np.asarray(rows, dtype=np.int64))

    def _read_range(self, column: str, start: int, stop: int) -> np.ndarray:
        """Contiguous rows: one slice per shard they cross, a view when the shard has one."""
        sizes = np.diff(self._row_start)
        lo = np.clip(start - self._row_start[:-1], 0, sizes)
        hi = np.clip(stop - self._row_start[:-1], 0, sizes)
        parts = [
            self._read_shard(int(s), column, slice(int(lo[s]), int(hi[s])))
            for s in np.flatnonzero(hi > lo)
        ]
        if len(parts) == 1:
            return parts[0]
        dtype, shape = self._schema[column]
        return np.concatenate(parts) if parts else np.empty((0, *shape), dtype=dtype)

    def _read_rows(self, column: str, rows: np.ndarray) -> np.ndarray:
        """Any rows in any order: each shard is asked once, for the rows it holds."""
        if rows.size and (rows.min() < -self.num_rows or rows.max() >= self.num_rows):
            raise IndexError(
                f"{self.path}: rows must lie in [{-self.num_rows}, {self.num_rows}), "
                f"found {rows.min()}..{rows.max()}"
            )
        rows = rows % self.num_rows  # negative rows count from the end, as in numpy
        shard_of = np.searchsorted(self._row_start, rows, side="right") - 1
        dtype, shape = self._schema[column]
        out = np.empty((*rows.shape, *shape), dtype=dtype)
        for s in np.unique(shard_of):
            mine = shard_of == s
            out[mine] = self._read_shard(int(s), column, rows[mine] - self._row_start[s])
        return out

    def _read_shard(self, shard: int, column: str, rows: np.ndarray | slice) -> np.ndarray:
        part = self._shards[shard].read(column, rows)
        if column == self.episode_column:
            return part + self._episode_start[shard]  # a Python int keeps the column's dtype
        return part

    def close(self) -> None:
        for shard in self._shards:
            shard.close()


def _schema(store: EpisodeStore) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The dtype and row shape of each column, from a read of no rows."""
    parts = {name: store.read(name, slice(0, 0)) for name in store.columns}
    return {name: (part.dtype, part.shape[1:]) for name, part in parts.items()}


def _layout(store: EpisodeStore) -> dict[str, Any]:
    """What all shards of one dataset share: their columns and collection attributes."""
    layout: dict[str, Any] = {"columns": ", ".join(store.columns)}
    for name, (dtype, shape) in _schema(store).items():
        layout[f"column {name!r}"] = f"{dtype} rows of shape {shape}"
    for key, value in store.attrs.items():
        if key not in PER_SHARD_ATTRS:
            layout[f"attribute {key!r}"] = value
    return layout
