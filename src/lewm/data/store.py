"""Episode files in the stable-worldmodel HDF5 layout (DATAFORMAT.md §1).

One file, no groups: every column is a top-level dataset whose first axis is the global
row index (all episodes concatenated), plus ``ep_len``/``ep_offset`` describing where each
episode lies. Keeping this exact layout means the official ``tworoom.h5`` and friends load
unchanged, and the files we collect can be read by the reference code.

A dataset may also be split into shard files ``data-00000-of-00008.h5`` ... (one per job of
a cluster job array); ``open_store("data.h5")`` (in lewm.data.shards) reads them as one
file. Each shard is a complete file in the same layout, so any one of them can also be
opened by itself.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from lewm.io import atomic_path

# Official files compress pixels with Blosc, a filter that only exists in HDF5 once
# hdf5plugin has been imported (le-wm #76). Import it when installed; when it is not, the
# filter check in EpisodeStore turns the silent failure into a clear message.
with contextlib.suppress(ImportError):
    importlib.import_module("hdf5plugin")

EPISODE_COLUMNS = ("ep_idx", "episode_idx")
INDEX_COLUMNS = ("ep_len", "ep_offset")
# One frame per chunk, gzip level 1: on TwoRoom clips (2 frames, frameskip 5) this read
# 1.2-1.5x faster than lzf and 10x faster than 16-frame chunks at 64 and 224 px, in files
# 35-40% smaller than lzf; gzip is also readable by any HDF5 tool, lzf only by h5py.
PIXEL_COMPRESSION = {"compression": "gzip", "compression_opts": 1}
# Rows buffered before a write: fewer, larger writes, each a whole number of pixel chunks.
FLUSH_ROWS = 256
# Beyond this size "auto" leaves pixels on disk: a RAM copy per training run must stay
# affordable on an ordinary workstation.
AUTO_CACHE_BYTES = 4 * 2**30
CACHE_MODES = ("auto", "all", "none")
# HDF5 chunk cache of each open handle (one per DataLoader worker). The slot count must be
# well above the number of chunks that fit (HDF5 hashes chunks into slots and a collision
# evicts): 64 MiB holds ~430 one-frame chunks at 224 px and ~5,400 at 64 px. With HDF5's
# default 521 slots, re-reading 400 cached 224 px frames took 0.068 ms a frame; with these
# slots 0.019 ms (loader_speed's file). The slot table itself costs under 1 MiB.
CHUNK_CACHE_BYTES = 64 * 2**20
CHUNK_CACHE_SLOTS = 100_003


# Free space a flush must leave beyond its rows: HDF5 also writes metadata (a chunk index
# entry per frame, object headers), from a cache, and at close.
SPACE_MARGIN = 8 * 2**20


class DataFileError(ValueError):
    """An episode file that cannot be used; the message starts with the file path."""


def unreadable(path: str | os.PathLike[str], exc: Exception) -> DataFileError:
    """One line for an HDF5 file that fails to open or read (h5py raises OSError, or
    KeyError and RuntimeError for damaged objects): HDF5's message can span lines, and a
    file locked by its writer deserves to be called that, not corrupt."""
    if getattr(exc, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK):
        return DataFileError(
            f"{path}: open for writing by another process (HDF5 file lock); wait until it "
            "has finished"
        )
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # no repr quotes
    detail = " ".join(str(text).split())
    return DataFileError(f"{path}: unreadable HDF5 file (truncated or corrupt?): {detail}")


def _cache_mode(cache: str) -> str:
    if cache not in CACHE_MODES:
        raise ValueError(f"cache={cache!r}: expected one of {', '.join(CACHE_MODES)}")
    return cache


class EpisodeStore:
    """Read-only random access to an episode file.

    Columns other than ``pixels`` are small and always held in RAM. ``pixels`` is held in
    RAM according to ``cache``; otherwise it is read from disk on demand. The HDF5 handle
    is opened lazily in each process, so a store can be pickled into DataLoader workers.

    This class reads one file. To open a dataset that may be sharded, call
    :func:`lewm.data.open_store`, which returns a
    :class:`~lewm.data.shards.ShardedEpisodeStore` when ``path`` names shard files: the
    choice lives there so that this module never imports the shards one (which builds on it).
    """

    def __init__(self, path: str | os.PathLike[str], cache: str = "auto") -> None:
        self.path = Path(path)
        self.cache = _cache_mode(cache)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        if not self.path.exists():
            raise DataFileError(f"{self.path}: no such file")
        if self.path.is_dir() or not h5py.is_hdf5(self.path):
            raise DataFileError(f"{self.path}: not an HDF5 file (expected an episode .h5 file)")
        try:
            self._load(self._handle())
        except OSError as exc:
            self.close()
            raise unreadable(self.path, exc) from None
        except BaseException:
            self.close()
            raise

    def _load(self, f: h5py.File) -> None:
        datasets = {name: obj for name, obj in f.items() if isinstance(obj, h5py.Dataset)}
        self.columns: tuple[str, ...] = tuple(sorted(datasets))
        self.attrs: dict[str, Any] = {k: _plain(v) for k, v in f.attrs.items()}
        env = self.attrs.get("env")
        self.env_name: str | None = None if env is None else str(env)

        episode_cols = [c for c in EPISODE_COLUMNS if c in datasets]
        required = (*INDEX_COLUMNS, "pixels", "action", "step_idx")
        for name in required:
            if name not in datasets:
                raise self._error(name, "missing column")
        if not episode_cols:
            raise self._error("ep_idx", "missing column (expected 'ep_idx' or 'episode_idx')")
        self.episode_column: str = episode_cols[0]

        pixels = datasets["pixels"]
        if pixels.ndim != 4 or pixels.shape[3] != 3:
            raise self._error("pixels", f"expected shape (N, H, W, 3), found {pixels.shape}")
        if pixels.dtype != np.uint8:
            raise self._error("pixels", f"expected dtype uint8, found {pixels.dtype}")
        if pixels.shape[1] != pixels.shape[2]:
            raise self._error("pixels", f"expected square images, found {pixels.shape[1:3]}")
        action = datasets["action"]
        if action.ndim != 2 or action.dtype.kind != "f":
            raise self._error(
                "action", f"expected a float array (N, A), found {action.dtype} {action.shape}"
            )

        self.num_rows = int(pixels.shape[0])
        self.image_size = int(pixels.shape[1])
        self.action_dim = int(action.shape[1])
        for name, ds in datasets.items():
            if name in INDEX_COLUMNS:
                continue
            if ds.ndim == 0 or ds.shape[0] != self.num_rows:
                raise self._error(
                    name, f"expected {self.num_rows} rows (as pixels), found shape {ds.shape}"
                )
            self._check_filters(name, ds)

        self.ep_len = self._index_column(datasets["ep_len"])
        self.ep_offset = self._index_column(datasets["ep_offset"])
        self.num_episodes = int(self.ep_len.shape[0])
        self._check_episodes()

        self._ram: dict[str, np.ndarray] = {}
        cache_pixels = self._cache_pixels(pixels.nbytes)
        for name in datasets:
            if name not in INDEX_COLUMNS and (name != "pixels" or cache_pixels):
                self._hold(name)
        self._check_actions()

    def _check_actions(self) -> None:
        """Refuse NaN or inf actions beyond the layout's NaN after each episode's final
        observation: training skips every clip whose loss is not finite, so such a file
        would "train" to the end without learning, and exit 0."""
        action = self._ram["action"]
        last = np.zeros(self.num_rows, dtype=bool)
        last[self.ep_offset + self.ep_len - 1] = True
        bad = np.isinf(action).any(axis=1) | (np.isnan(action).any(axis=1) & ~last)
        if bad.any():
            raise self._non_finite(
                "action", np.flatnonzero(bad), "finite actions, NaN only in an episode's last row"
            )

    def require_finite(
        self, columns: Iterable[str], rows: np.ndarray | slice = slice(None)
    ) -> None:
        """Refuse NaN or inf in the float ``columns`` over ``rows`` (all by default).

        For the columns a caller feeds to a model or an environment (state, proprio): a
        non-finite value there fails far from the file, or not at all. ``action`` is
        checked when the file is opened.
        """
        positions = np.arange(self.num_rows)[rows]
        for column in columns:
            values = self.read(column, rows)
            if values.dtype.kind not in "fc":
                continue
            bad = ~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
            if bad.any():
                raise self._non_finite(column, positions[bad], "finite values")

    def _non_finite(self, column: str, rows: np.ndarray, expected: str) -> DataFileError:
        """The error for non-finite ``rows`` (global, sorted) of ``column``, with the first
        one as episode/step, which is how a person finds it again."""
        row = int(rows[0])
        episode = int(np.searchsorted(self.ep_offset, row, side="right")) - 1
        step = row - int(self.ep_offset[episode])
        return self._error(
            column,
            f"NaN or inf in {rows.size} rows (first: episode {episode}, step {step}); "
            f"expected {expected}",
        )

    def _index_column(self, ds: h5py.Dataset) -> np.ndarray:
        if ds.ndim != 1 or ds.dtype.kind not in "iu":
            raise self._error(
                ds.name.lstrip("/"), f"expected a 1-D integer array, found {ds.dtype} {ds.shape}"
            )
        return ds[()].astype(np.int64)

    def _check_episodes(self) -> None:
        if self.ep_offset.shape != self.ep_len.shape:
            raise self._error(
                "ep_offset",
                f"expected {self.num_episodes} entries (as ep_len), "
                f"found {self.ep_offset.shape[0]}",
            )
        if self.num_episodes == 0:
            raise self._error("ep_len", "expected at least one episode, found none")
        if (self.ep_len < 1).any():
            raise self._error("ep_len", f"expected lengths >= 1, found {self.ep_len.min()}")
        expected = np.concatenate([[0], np.cumsum(self.ep_len)[:-1]])
        bad = np.flatnonzero(self.ep_offset != expected)
        if bad.size:
            e = int(bad[0])
            raise self._error(
                "ep_offset",
                f"expected episodes stored back to back; episode {e} starts at row "
                f"{self.ep_offset[e]}, expected {expected[e]}",
            )
        if int(self.ep_len.sum()) != self.num_rows:
            raise self._error(
                "ep_len",
                f"expected lengths summing to {self.num_rows} rows, found {self.ep_len.sum()}",
            )

    def _check_filters(self, name: str, ds: h5py.Dataset) -> None:
        plist = ds.id.get_create_plist()
        for i in range(plist.get_nfilters()):
            code, _, _, filter_name = plist.get_filter(i)
            if not h5py.h5z.filter_avail(code):
                hint = " (Blosc: pip install hdf5plugin)" if code == 32001 else ""
                label = filter_name.decode(errors="replace") or "unnamed"
                raise self._error(
                    name, f"compressed with unavailable HDF5 filter {code} {label}{hint}"
                )

    def _cache_pixels(self, nbytes: int) -> bool:
        if self.cache == "auto":
            return nbytes < AUTO_CACHE_BYTES
        return self.cache == "all"

    def _hold(self, column: str) -> None:
        """Read a column into RAM, read-only: a slice of a RAM column is a view, and writing
        into it would silently change the data every later read sees."""
        array = self._handle()[column][()]
        array.flags.writeable = False
        self._ram[column] = array

    def _error(self, column: str, message: str) -> DataFileError:
        return DataFileError(f"{self.path}: column {column!r}: {message}")

    def _handle(self) -> h5py.File:
        # A handle inherited through fork is shared with the parent and unsafe to use, so
        # each process opens its own.
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(
                    self.path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=CHUNK_CACHE_SLOTS
                )
            except OSError as exc:
                raise unreadable(self.path, exc) from None
            self._pid = os.getpid()
        return self._file

    @property
    def render(self) -> str:
        """How the frames were drawn (``lewm collect --render``); files that do not say,
        such as the released ones, were drawn the faithful way."""
        return str(self.attrs.get("render", "faithful"))

    @property
    def cached(self) -> bool:
        """Whether ``pixels`` is served from RAM."""
        return "pixels" in self._ram

    @property
    def worker_start(self) -> str | None:
        """How DataLoader workers that read this store must start: None for the platform's
        default (fork on Linux), which an HDF5 store survives by reopening per process."""
        return None

    def read(self, column: str, rows: np.ndarray | slice) -> np.ndarray:
        """Rows of one column, in the order given (indices may repeat or be unsorted).

        A slice of a column held in RAM is a read-only view; copy it before writing to it.
        """
        if column not in self.columns:
            raise DataFileError(
                f"{self.path}: column {column!r}: no such column; "
                f"the file has {', '.join(self.columns)}"
            )
        if column in self._ram:
            return self._ram[column][rows]
        return self._read_stored(column, rows)

    def _read_stored(self, column: str, rows: np.ndarray | slice) -> np.ndarray:
        """Rows of a column not held in RAM: read from the file."""
        ds = self._handle()[column]
        try:
            if isinstance(rows, slice):
                return ds[rows]
            rows = np.asarray(rows, dtype=np.int64)
            # One read per row: h5py's list indexing costs about 1 ms per call whatever the
            # size, ten times a single-row read, and would also demand sorted unique rows.
            out = np.empty((*rows.shape, *ds.shape[1:]), dtype=ds.dtype)
            for pos, row in np.ndenumerate(rows):
                out[pos] = ds[row]
            return out
        except OSError as exc:
            detail = " ".join(str(exc).split())
            raise self._error(column, f"unreadable (truncated or corrupt?): {detail}") from None

    def episode_rows(self, episode: int) -> slice:
        """The global rows of one episode."""
        start = int(self.ep_offset[episode])
        return slice(start, start + int(self.ep_len[episode]))

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._pid = None

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for array in self._ram.values():  # pickle drops the read-only flag
            array.flags.writeable = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, episodes={self.num_episodes}, "
            f"rows={self.num_rows}, image_size={self.image_size}, "
            f"action_dim={self.action_dim}, cached={self.cached})"
        )


def _plain(value: Any) -> Any:
    """HDF5 attributes come back as numpy scalars and bytes; callers want plain Python."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class EpisodeWriter:
    """Writes an episode file atomically: ``out`` appears only when the writer closes cleanly.

    Rows are buffered and written to ``pixels`` in whole chunks, so no compressed chunk is
    ever written twice; together with ``track_times=False`` this makes the file a pure
    function of the episodes added.

    A full disk ends the writer with one ``OSError(ENOSPC)`` naming ``out``, before HDF5
    meets it where possible: HDF5's write failures otherwise surface in h5py finalisers,
    which can only print them, and the writer ran on into a broken file and a crash.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        attrs: dict[str, Any] | None = None,
        image_chunk: int = 1,
    ) -> None:
        if image_chunk < 1:
            raise ValueError(f"image_chunk={image_chunk}: expected >= 1")
        self.out = Path(out)
        self.attrs = dict(attrs or {})
        self.image_chunk = image_chunk
        self._atomic: contextlib.AbstractContextManager[Path] | None = None
        self._tmp: Path | None = None
        self._file: h5py.File | None = None
        # Open column datasets, held so that none is closed (and its cache written) in a
        # finaliser, where a write error could only be printed.
        self._datasets: dict[str, h5py.Dataset] = {}
        self._schema: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._pending: dict[str, list[np.ndarray]] = {}
        self._pending_rows = 0
        self._rows = 0
        self._ep_len: list[int] = []

    def __enter__(self) -> EpisodeWriter:
        self._atomic = atomic_path(self.out)
        self._tmp = self._atomic.__enter__()
        try:
            self._file = h5py.File(self._tmp, "w", libver="latest")
            for key in sorted(self.attrs):
                self._file.attrs[key] = self.attrs[key]
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._abort(exc)
            return
        try:
            if not self._ep_len:
                raise ValueError(f"{self.out}: no episodes were added; nothing written")
            self._flush(final=True)
            lens = np.asarray(self._ep_len, dtype=np.int32)
            offsets = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)[:-1]]).astype(np.int64)
            assert self._file is not None
            self._require_space(lens.nbytes + offsets.nbytes)
            with self._writing():
                self._file.create_dataset("ep_len", data=lens, track_times=False)
                self._file.create_dataset("ep_offset", data=offsets, track_times=False)
                self._file.close()
            self._datasets.clear()
        except BaseException as err:
            self._abort(err)
            raise
        assert self._atomic is not None
        self._atomic.__exit__(None, None, None)

    def _abort(self, exc: BaseException) -> None:
        if self._file is not None:
            # The file is discarded, but HDF5 still writes its caches on close; after a full
            # disk that fails again (or crashes), so the space goes back first.
            if self._tmp is not None:
                with contextlib.suppress(OSError):
                    os.truncate(self._tmp, 0)
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
            self._datasets.clear()
        if self._atomic is not None:
            with contextlib.suppress(BaseException):
                self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            self._atomic = None

    def add_episode(self, columns: dict[str, np.ndarray]) -> None:
        """Append one episode of k env steps: k + 1 rows per column, last action row NaN."""
        if self._file is None:
            raise RuntimeError("EpisodeWriter must be used as a context manager (with ...)")
        arrays = self._validate(columns)
        rows = arrays["pixels"].shape[0]
        episode = len(self._ep_len)
        arrays["step_idx"] = np.arange(rows, dtype=np.int32)
        arrays["ep_idx"] = np.full(rows, episode, dtype=np.int32)
        if not self._schema:
            self._schema = {k: (v.dtype, v.shape[1:]) for k, v in arrays.items()}
            self._pending = {k: [] for k in arrays}
        for name, (dtype, shape) in self._schema.items():
            if name not in arrays:
                raise ValueError(f"{self.out}: episode {episode}: missing column {name!r}")
            if arrays[name].dtype != dtype or arrays[name].shape[1:] != shape:
                raise ValueError(
                    f"{self.out}: episode {episode}: column {name!r}: expected {dtype} rows of "
                    f"shape {shape} as in episode 0, "
                    f"found {arrays[name].dtype} {arrays[name].shape[1:]}"
                )
        extra = sorted(set(arrays) - set(self._schema))
        if extra:
            raise ValueError(f"{self.out}: episode {episode}: column(s) {extra} not in episode 0")
        for name, value in arrays.items():
            self._pending[name].append(value)
        self._pending_rows += rows
        self._ep_len.append(rows)
        if self._pending_rows >= max(FLUSH_ROWS, self.image_chunk):
            self._flush(final=False)

    def _validate(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {name: np.asarray(value) for name, value in columns.items()}
        where = f"{self.out}: episode {len(self._ep_len)}"
        for name in ("pixels", "action"):
            if name not in arrays:
                raise ValueError(f"{where}: missing column {name!r}")
        for name in ("step_idx", "ep_idx", "episode_idx", *INDEX_COLUMNS):
            if name in arrays:
                raise ValueError(f"{where}: column {name!r} is written by EpisodeWriter itself")
        for name in arrays:
            if "/" in name:
                raise ValueError(
                    f"{where}: column {name!r}: '/' would create an HDF5 group; the layout "
                    f"has none (the official files write '/' as '_')"
                )
        pixels, action = arrays["pixels"], arrays["action"]
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[3] != 3:
            raise ValueError(
                f"{where}: column 'pixels': expected uint8 (k+1, H, W, 3), "
                f"found {pixels.dtype} {pixels.shape}"
            )
        rows = pixels.shape[0]
        if rows < 1:
            raise ValueError(f"{where}: column 'pixels': expected at least one row")
        if action.ndim != 2 or action.dtype.kind != "f":
            raise ValueError(
                f"{where}: column 'action': expected float (k+1, A), "
                f"found {action.dtype} {action.shape}"
            )
        if not np.isnan(action[-1]).all() or np.isnan(action[:-1]).any():
            raise ValueError(
                f"{where}: column 'action': expected NaN on the last row and only there"
            )
        for name, value in arrays.items():
            if value.ndim == 0 or value.shape[0] != rows:
                raise ValueError(
                    f"{where}: column {name!r}: expected {rows} rows (as pixels), "
                    f"found shape {value.shape}"
                )
        return arrays

    def _flush(self, final: bool) -> None:
        count = (
            self._pending_rows
            if final
            else self._pending_rows // self.image_chunk * self.image_chunk
        )
        if count == 0:
            return
        assert self._file is not None
        blocks = {name: np.concatenate(parts) for name, parts in self._pending.items()}
        self._require_space(sum(block[:count].nbytes for block in blocks.values()))
        with self._writing():
            for name, block in blocks.items():
                self._append(name, block[:count])
            # HDF5's caches are written here, so that a failure raises here.
            self._file.flush()
        for name, block in blocks.items():
            self._pending[name] = [block[count:]] if count < block.shape[0] else []
        self._rows += count
        self._pending_rows -= count

    def _require_space(self, nbytes: int) -> None:
        """Refuse a write of ``nbytes`` (uncompressed, an upper bound on what gzip stores)
        that would not leave SPACE_MARGIN free: HDF5 fails badly on a full disk."""
        assert self._tmp is not None
        if _free_bytes(self._tmp.parent) < nbytes + SPACE_MARGIN:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.out))

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn HDF5's write failures into an OSError that names ``out``: HDF5 names the
        temporary file, and reports a failed flush as a RuntimeError with the errno only in
        its text."""
        try:
            yield
        except (OSError, RuntimeError) as exc:
            code = getattr(exc, "errno", None)
            if code is None and (found := re.search(r"errno = (\d+)", str(exc))):
                code = int(found[1])
            if not code:
                raise
            raise OSError(code, os.strerror(code), str(self.out)) from None

    def _append(self, name: str, block: np.ndarray) -> None:
        assert self._file is not None
        if name not in self._datasets:
            image = name == "pixels"
            chunk_rows = self.image_chunk if image else 1024
            self._datasets[name] = self._file.create_dataset(
                name,
                shape=(0, *block.shape[1:]),
                maxshape=(None, *block.shape[1:]),
                dtype=block.dtype,
                chunks=(chunk_rows, *block.shape[1:]),
                track_times=False,
                **(PIXEL_COMPRESSION if image else {}),
            )
        ds = self._datasets[name]
        ds.resize(self._rows + block.shape[0], axis=0)
        ds[self._rows :] = block


def _free_bytes(folder: Path) -> int:
    """Bytes free for writing in ``folder``'s file system."""
    return shutil.disk_usage(folder).free
