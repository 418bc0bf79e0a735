"""Episode datasets in the Lance columnar format, as the stable-worldmodel platform lays them out.

The platform keeps a dataset as one Lance table: a ``NAME.lance`` folder (``_versions/``,
``data/``, ...) of flat rows, all episodes back to back. ``episode_idx`` and ``step_idx`` are
int32 columns, and episodes are the runs of equal ``episode_idx``: there is no
``ep_len``/``ep_offset`` and no dataset attributes. Images are encoded one frame per row in
binary columns (its writer uses JPEG); every other column is a fixed-size list of float32,
flattened, with ``.`` in a name written as ``_``.

:class:`LanceEpisodeStore` reads such a table through the :class:`EpisodeStore` interface, so
training, evaluation, replay and analysis use it unchanged. What lewm writes
(:mod:`lewm.data.convert`) is the same layout with a few additions the platform's reader
ignores, each needed for a lossless round trip to HDF5: frames as PNG (lossless, and decoded
by any reader that decodes the JPEG ones), columns in their own dtype, and metadata for what
Arrow types cannot say (HDF5 names, row shapes, attributes, the dtypes of ep_len/ep_offset).
"""

from __future__ import annotations

import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from lewm.data.store import (
    INDEX_COLUMNS,
    DataFileError,
    EpisodeStore,
    _cache_mode,
)

SUFFIX = ".lance"
# What makes a folder a Lance dataset: its version manifests.
VERSIONS = "_versions"
# Schema metadata of the datasets lewm writes (all JSON text).
ATTRS_KEY = b"lewm:attrs"  # the dataset attributes (env, resolution, frameskip, ...)
INDEX_DTYPES_KEY = b"lewm:index_dtypes"  # numpy dtypes of ep_len and ep_offset
# Field metadata: the column's HDF5 name where the Lance name differs, and the row shape of a
# column flattened into a fixed-size list.
NAME_KEY = b"lewm:name"
SHAPE_KEY = b"lewm:shape"
# The layout's index columns: the platform finds episodes by the first.
EPISODE_FIELD = "episode_idx"
STEP_FIELD = "step_idx"
# ep_len/ep_offset dtypes where a dataset does not record them (the platform's do not): the
# HDF5 layout's (DATAFORMAT.md §1).
DEFAULT_INDEX_DTYPES = {"ep_len": "int32", "ep_offset": "int64"}
# Frames decoded at a time when a whole image column is read into RAM.
DECODE_BLOCK = 1024
# From this many frames on, one read decodes (or a conversion encodes) them on all CPUs.
PARALLEL_FRAMES = 64


def lance_module(path: Path) -> ModuleType:
    """The ``lance`` package (pylance), imported on first use: it warns at every fork of the
    process that imported it, which HDF5 users should never see. ``path`` is the dataset
    the error names when it is not installed."""
    try:
        import lance
    except ImportError:
        raise DataFileError(f"{path}: Lance datasets need pylance (pip install pylance)") from None
    return lance


def is_lance_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a Lance dataset: by its ``.lance`` name (which also covers one
    not written yet) or, for any folder, by its contents."""
    path = Path(path)
    return path.suffix.lower() == SUFFIX or (path / VERSIONS).is_dir()


def is_lance_dataset(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Lance dataset folder (rather than anything else by that name)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / VERSIONS).is_dir()


def one_line(exc: Exception) -> str:
    """A Lance error message on one line: they can span lines and end with the Rust source
    locations of the error."""
    return " ".join(re.sub(r",?\s*\S+\.rs:\d+:\d+", "", str(exc)).split())


def lance_error(path: Path, exc: Exception) -> DataFileError:
    """The error for a dataset that Lance (or Pillow, for a frame) fails to read."""
    return DataFileError(
        f"{path}: unreadable Lance dataset (truncated or corrupt?): {one_line(exc)}"
    )


def _dataset_folder(path: Path) -> Path:
    """The Lance dataset ``path`` names: the folder itself, or the one ``NAME.lance`` dataset
    in a folder (what the platform calls a database holding one table)."""
    if not path.exists():
        raise DataFileError(f"{path}: no such Lance dataset")
    if not path.is_dir():
        raise DataFileError(f"{path}: not a Lance dataset (a file; expected a .lance folder)")
    if (path / VERSIONS).is_dir():
        return path
    tables = sorted(p for p in path.glob(f"*{SUFFIX}") if is_lance_dataset(p))
    if len(tables) == 1:
        return tables[0]
    if tables:
        raise DataFileError(
            f"{path}: holds {len(tables)} Lance datasets ({', '.join(t.name for t in tables)}); "
            "name one of them"
        )
    raise DataFileError(
        f"{path}: a folder, but not a Lance dataset (no {VERSIONS}/ inside); expected an "
        "episode .h5 file or a .lance dataset folder"
    )


@dataclass(frozen=True)
class LanceColumn:
    """How one stored field becomes a column: ``kind`` is "image" (encoded frames, decoded
    on read), "list" (a fixed-size list, reshaped to ``shape``) or "scalar"."""

    field: str
    kind: str
    dtype: np.dtype
    shape: tuple[int, ...]


def decode_frame(blob: bytes) -> np.ndarray:
    """An encoded frame (PNG, JPEG or anything Pillow reads) as uint8 (H, W, 3) RGB, as the
    platform's reader converts it."""
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as image:
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


class LanceEpisodeStore(EpisodeStore):
    """A Lance episode dataset read through the :class:`EpisodeStore` interface.

    Columns keep their HDF5 names and dtypes where the dataset records them, and ``ep_len``
    and ``ep_offset`` are derived from the episode column and served like the stored ones.
    Non-image columns are held in RAM; image columns are decoded into RAM by ``cache`` as
    ``pixels`` is in an HDF5 store, and otherwise read and decoded on demand. The Lance
    handle is opened lazily in each process, so a store can be pickled into DataLoader
    workers; those must be spawned, not forked, while frames are read from disk
    (:attr:`worker_start`).
    """

    def __init__(self, path: str | os.PathLike[str], cache: str = "auto") -> None:
        self.path = Path(path)
        self.cache = _cache_mode(cache)
        self._file: Any = None
        self._pid: int | None = None
        self._folder = _dataset_folder(self.path)
        try:
            self._load_lance()
        except (OSError, ValueError, RuntimeError) as exc:
            if isinstance(exc, DataFileError):
                raise
            raise lance_error(self.path, exc) from None

    def _load_lance(self) -> None:
        ds = self._handle()
        self.num_rows = ds.count_rows()
        if self.num_rows == 0:
            raise DataFileError(f"{self.path}: expected at least one episode, found no rows")
        schema = ds.schema
        meta = schema.metadata or {}
        self.attrs = self._json(meta, ATTRS_KEY)
        env = self.attrs.get("env")
        self.env_name = None if env is None else str(env)
        self._specs: dict[str, LanceColumn] = {}
        for f in schema:
            name = f.metadata.get(NAME_KEY, b"").decode() if f.metadata else ""
            name = name or f.name
            if name in INDEX_COLUMNS:
                raise self._error(name, "stored, but lewm derives it from the episode column")
            if name in self._specs:
                raise self._error(name, "stored twice (two fields by this name)")
            self._specs[name] = self._column_spec(name, f)
        self.columns = tuple(sorted([*self._specs, *INDEX_COLUMNS]))

        for name in ("pixels", "action", STEP_FIELD):
            if name not in self._specs:
                raise self._error(name, "missing column")
        pixels, action = self._specs["pixels"], self._specs["action"]
        if pixels.kind != "image":
            raise self._error("pixels", "expected encoded frames (a binary column)")
        if pixels.shape[0] != pixels.shape[1]:
            raise self._error("pixels", f"expected square images, found {pixels.shape[:2]}")
        if action.kind != "list" or len(action.shape) != 1 or action.dtype.kind != "f":
            raise self._error(
                "action", f"expected a float list per row, found {action.dtype} {action.shape}"
            )
        self.image_size = pixels.shape[0]
        self.action_dim = action.shape[0]

        self._ram: dict[str, np.ndarray] = {}
        for name, spec in self._specs.items():
            if spec.kind != "image":
                self._hold(name)
        self.episode_column = self._boundary_column()
        self._set_episodes(self._ram[self.episode_column])
        self._hold_index(meta)
        self._check_episodes()
        images = [n for n, s in self._specs.items() if s.kind == "image"]
        frame_bytes = sum(int(np.prod(self._specs[n].shape)) for n in images)
        if self._cache_pixels(self.num_rows * frame_bytes):
            for name in images:
                self._hold(name)
        self._check_actions()

    def _hold_index(self, meta: dict[bytes, bytes]) -> None:
        """Serve ep_len and ep_offset like stored columns, in the dtypes the dataset records
        (those of the HDF5 file it came from) or the layout's."""
        dtypes = {**DEFAULT_INDEX_DTYPES, **self._json(meta, INDEX_DTYPES_KEY)}
        for name in INDEX_COLUMNS:
            try:
                dtype = np.dtype(dtypes[name])
            except TypeError:
                dtype = np.dtype(object)
            if dtype.kind not in "iu":
                raise DataFileError(
                    f"{self.path}: schema metadata {INDEX_DTYPES_KEY.decode()!r}: {name}: "
                    f"expected an integer dtype, found {dtypes[name]!r}"
                )
            array = getattr(self, name).astype(dtype)
            array.flags.writeable = False
            self._ram[name] = array

    def _json(self, meta: dict[bytes, bytes], key: bytes) -> dict[str, Any]:
        if key not in meta:
            return {}
        try:
            value = json.loads(meta[key])
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise DataFileError(f"{self.path}: schema metadata {key.decode()!r}: not a JSON object")
        return value

    def _column_spec(self, name: str, f: Any) -> LanceColumn:
        """Check one field's type and work out what its rows look like."""
        import pyarrow as pa

        t = f.type
        shape = self._recorded_shape(name, f)
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            if shape is None:  # the platform records none: the first frame says
                shape = self._read_frame_shape(name, f.name)
            if len(shape) != 3 or shape[2] != 3:
                raise self._error(name, f"expected RGB frames (H, W, 3), found shape {shape}")
            return LanceColumn(f.name, "image", np.dtype(np.uint8), shape)
        if pa.types.is_fixed_size_list(t) and _numeric(t.value_type):
            size = t.list_size
            shape = shape if shape is not None else (size,)
            if int(np.prod(shape)) != size:
                raise self._error(name, f"row shape {shape} does not hold {size} values")
            return LanceColumn(f.name, "list", np.dtype(t.value_type.to_pandas_dtype()), shape)
        if _numeric(t):
            return LanceColumn(f.name, "scalar", np.dtype(t.to_pandas_dtype()), ())
        raise self._error(
            name, f"unsupported Lance type {t} (expected binary frames, numbers or "
            "fixed-size lists of numbers)"
        )

    def _recorded_shape(self, name: str, f: Any) -> tuple[int, ...] | None:
        if not f.metadata or SHAPE_KEY not in f.metadata:
            return None
        try:
            shape = json.loads(f.metadata[SHAPE_KEY])
        except ValueError:
            shape = None
        if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise self._error(
                name, f"field metadata {SHAPE_KEY.decode()!r}: expected a list of sizes"
            )
        return tuple(shape)

    def _read_frame_shape(self, name: str, field: str) -> tuple[int, ...]:
        return decode_frame(self._first_blob(name, field)).shape

    def _first_blob(self, name: str, field: str) -> bytes:
        blob = self._handle().take([0], columns=[field]).column(0)[0].as_py()
        if blob is None:
            raise self._error(name, "row 0 holds no frame (null)")
        return blob

    def encoding(self, column: str) -> str:
        """How ``column``'s frames are encoded, by its first ("png", or the platform's lossy
        "jpeg"); "none" for a column of numbers."""
        from PIL import Image

        spec = self._specs.get(column)
        if spec is None or spec.kind != "image":
            return "none"
        try:
            with Image.open(io.BytesIO(self._first_blob(column, spec.field))) as image:
                return (image.format or "unknown").lower()
        except (OSError, ValueError, RuntimeError) as exc:
            if isinstance(exc, DataFileError):
                raise
            raise lance_error(self.path, exc) from None

    def _boundary_column(self) -> str:
        """The column whose runs are the episodes: the field ``episode_idx`` (under its HDF5
        name, if it has one), as the platform's reader finds them."""
        for name, spec in self._specs.items():
            if spec.field == EPISODE_FIELD and spec.kind == "scalar":
                if spec.dtype.kind not in "iu":
                    raise self._error(name, f"expected integers, found {spec.dtype}")
                return name
        raise self._error(
            EPISODE_FIELD,
            "missing column (one integer per row; episodes are its runs of equal values)",
        )

    def _set_episodes(self, ids: np.ndarray) -> None:
        down = np.flatnonzero(np.diff(ids) < 0)
        if down.size:
            raise self._error(
                self.episode_column,
                f"decreases at row {down[0] + 1}: episodes must be stored one after another",
            )
        starts = np.concatenate([[0], np.flatnonzero(np.diff(ids)) + 1])
        self.ep_offset = starts.astype(np.int64)
        self.ep_len = np.diff(np.append(self.ep_offset, self.num_rows)).astype(np.int64)
        self.num_episodes = int(self.ep_len.shape[0])

    def _hold(self, column: str) -> None:
        """Read a whole column into RAM (decoding frames), read-only as in the HDF5 store."""
        spec = self._specs[column]
        if spec.kind == "image":
            array = np.empty((self.num_rows, *spec.shape), dtype=np.uint8)
            for start in range(0, self.num_rows, DECODE_BLOCK):
                stop = min(start + DECODE_BLOCK, self.num_rows)
                array[start:stop] = self._read_frames(column, np.arange(start, stop))
        else:
            table = self._handle().to_table(columns=[spec.field])
            array = self._values(column, table.column(0).combine_chunks())
        array.flags.writeable = False
        self._ram[column] = array

    def _values(self, column: str, values: Any) -> np.ndarray:
        """An Arrow column as the numpy array of its rows."""
        spec = self._specs[column]
        rows = len(values)
        if spec.kind == "list":
            values = values.flatten()
        if values.null_count:
            raise self._error(column, f"{values.null_count} values missing (null)")
        flat = values.to_numpy(zero_copy_only=False).astype(spec.dtype, copy=False)
        return flat.reshape(rows, *spec.shape)

    def _read_stored(self, column: str, rows: np.ndarray | slice) -> np.ndarray:
        """Frames of an image column not held in RAM: each distinct row is read and decoded
        once, whatever the order or repeats asked for."""
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(self.num_rows))
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < -self.num_rows or rows.max() >= self.num_rows):
            raise IndexError(
                f"{self.path}: rows must lie in [{-self.num_rows}, {self.num_rows}), "
                f"found {rows.min()}..{rows.max()}"
            )
        unique, inverse = np.unique(rows % self.num_rows, return_inverse=True)
        frames = self._read_frames(column, unique)
        return frames[inverse.reshape(rows.shape)]

    def _read_frames(self, column: str, rows: np.ndarray) -> np.ndarray:
        """Decoded frames of sorted distinct ``rows``."""
        spec = self._specs[column]
        out = np.empty((rows.size, *spec.shape), dtype=np.uint8)
        if not rows.size:
            return out
        try:
            blobs = self._handle().take(rows, columns=[spec.field]).column(0).to_pylist()
            frames = decode_frames(blobs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise lance_error(self.path, exc) from None
        for i, frame in enumerate(frames):
            if frame.shape != spec.shape:
                raise self._error(
                    column, f"row {rows[i]}: frame of shape {frame.shape}, expected {spec.shape}"
                )
            out[i] = frame
        return out

    def _handle(self) -> Any:
        # A handle is never used by a process other than the one that opened it, as for
        # HDF5 (see worker_start for why that alone does not make fork safe).
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = lance_module(self.path).dataset(str(self._folder))
            except (OSError, ValueError, RuntimeError) as exc:
                raise lance_error(self.path, exc) from None
            self._pid = os.getpid()
        return self._file

    @property
    def worker_start(self) -> str | None:
        """Spawn while any frames are read from disk: Lance's reads crash (SIGSEGV) in a
        process forked from one that had used Lance, even through a handle of its own. A
        worker that only reads RAM never calls Lance, and can fork."""
        images = [n for n, spec in self._specs.items() if spec.kind == "image"]
        return None if all(n in self._ram for n in images) else "spawn"

    def close(self) -> None:
        """Drop the handle (Lance has nothing to close; its files close with the object)."""
        self._file = None
        self._pid = None


def decode_frames(blobs: list[bytes]) -> list[np.ndarray]:
    """Decoded frames, on all CPUs when there are enough to pay for the threads: Pillow
    releases the GIL while it decodes. A pool per call costs little next to that many frames,
    and leaves no threads behind in a store that is pickled or forked."""
    if len(blobs) < PARALLEL_FRAMES:
        return [decode_frame(blob) for blob in blobs]
    with ThreadPoolExecutor(available_cpus()) as pool:
        return list(pool.map(decode_frame, blobs))


def _numeric(arrow_type: Any) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
    )


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
