"""Converting episode datasets between HDF5 and Lance, losslessly.

Any dataset :func:`~lewm.data.open_store` reads (an HDF5 file in lewm's or the official layout,
a set of shards, a Lance dataset) can be written as either format; the output's name picks
it (``.lance`` or ``.h5``/``.hdf5``). Every column keeps its values, dtype and row shape, the
episodes keep their boundaries, and the dataset attributes (env, resolution, frameskip,
render, policy, ...) carry over, so HDF5 → Lance → HDF5 gives back the same columns.

The Lance output follows the stable-worldmodel platform's layout (see
:mod:`lewm.data.lance_store`), with frames as PNG rather than the platform's JPEG: JPEG would
change every pixel, and the platform's reader decodes PNG all the same. A Lance dataset
written by the platform keeps its JPEG frames' decoded pixels when converted to HDF5.

Outputs are written atomically: a hidden ``.NAME.*.part`` file or folder beside the output
becomes the output only when complete, so an error or Ctrl-C leaves the old output (or none).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lewm.data.lance_store import (
    ATTRS_KEY,
    EPISODE_FIELD,
    INDEX_DTYPES_KEY,
    NAME_KEY,
    PARALLEL_FRAMES,
    SHAPE_KEY,
    STEP_FIELD,
    SUFFIX,
    available_cpus,
    is_lance_dataset,
    lance_module,
    one_line,
)
from lewm.data.shards import open_store
from lewm.data.store import INDEX_COLUMNS, PIXEL_COMPRESSION, EpisodeStore
from lewm.io import (
    PART,
    atomic_folder,
    atomic_path,
    check_output_file,
    held_output,
)

HDF5_SUFFIXES = (".h5", ".hdf5")
# Rows converted at a time, by their decoded size: bounds the memory a conversion needs
# whatever the image size.
BLOCK_BYTES = 64 * 2**20
# zlib level of the PNG frames. On TwoRoom frames at 224 px, level 1 decoded in 0.25-0.40 ms
# a frame against 0.53-0.55 ms at Pillow's default 6, and encoded 1.5x faster, in files 1.5x
# larger (3.4 against 2.2 KB a frame; a raw frame is 147 KB). Decoding is what every
# training step pays when frames are not held in RAM.
PNG_LEVEL = 1
# Rows of the non-image columns per HDF5 chunk, as EpisodeWriter writes them.
TABLE_CHUNK_ROWS = 1024

# dtype and row shape of each row-indexed column.
Schema = dict[str, tuple[np.dtype, tuple[int, ...]]]


def output_format(path: str | os.PathLike[str]) -> str:
    """``"lance"`` or ``"hdf5"``, by the output's extension: the one place a format is named
    rather than read from the contents, since the output does not exist yet."""
    suffix = Path(path).suffix.lower()
    if suffix == SUFFIX:
        return "lance"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    raise ValueError(
        f"{path}: unknown output format {suffix or '(no extension)'!r}; name it .lance for a "
        "Lance dataset or .h5 for HDF5"
    )


def check_output(path: str | os.PathLike[str], overwrite: bool) -> None:
    """Refuse to write ``path`` when something is there, unless ``overwrite`` and it is what
    the output would replace: a regular file for HDF5, a Lance dataset folder for Lance (never
    another folder, whose contents would be lost). Also refuses a Lance output without
    pylance, before any work is done for it."""
    path = Path(path)
    if output_format(path) == "hdf5":
        check_output_file(path, overwrite)
        return
    lance_module(path)
    if not os.path.lexists(path):
        return
    if not is_lance_dataset(path):
        raise FileExistsError(
            f"{path}: exists and is not a Lance dataset folder; lewm only replaces Lance "
            "datasets"
        )
    if not overwrite:
        raise FileExistsError(f"{path}: already exists; pass --overwrite to replace it")


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the dataset ``src`` to ``dst`` in the format its extension names; returns ``dst``.

    ``dst`` is replaced only with ``overwrite``, and only if it is a regular file (HDF5) or a
    Lance dataset (Lance), never the source itself.
    """
    dst = Path(dst)
    check_output(dst, overwrite)
    with open_store(src, cache="none") as store:
        if dst.exists() and store.path.exists() and os.path.samefile(store.path, dst):
            raise ValueError(f"{dst}: is the dataset being converted; write to another path")
        with held_output(dst, overwrite, check_output):
            write_store(store, dst, progress)
    return dst


def via_hdf5(out: Path, overwrite: bool, write: Callable[[Path], Any]) -> Path:
    """Make the Lance dataset ``out`` by having ``write`` make an HDF5 file, then converting.

    For writers that produce HDF5 episode by episode (collection): the file is a hidden
    ``.NAME.h5.part`` beside ``out``, removed afterwards, and by the next writer of ``out``
    if this process is killed.
    """
    check_output(out, overwrite)
    with held_output(out, overwrite, check_output):
        tmp = out.with_name(f".{out.name}.h5{PART}")
        try:
            write(tmp)
            with open_store(tmp, cache="none") as store:
                write_store(store, out, progress=False)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def write_store(store: EpisodeStore, dst: Path, progress: bool) -> None:
    """Write every column of ``store`` to ``dst`` atomically (the caller holds ``dst``)."""
    with _progress(progress) as bar:
        task = bar.add_task(f"convert to {dst.name}", total=store.num_rows)

        def advance(rows: int) -> None:
            bar.update(task, advance=rows)

        if output_format(dst) == "lance":
            with atomic_folder(dst, replace=True) as tmp:
                _write_lance(store, tmp, dst, advance)
        else:
            with atomic_path(dst) as tmp:
                _write_hdf5(store, tmp, advance)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def _schema(store: EpisodeStore) -> Schema:
    """The columns other than ep_len/ep_offset, from a read of no rows."""
    parts = {c: store.read(c, slice(0, 0)) for c in store.columns if c not in INDEX_COLUMNS}
    return {name: (part.dtype, part.shape[1:]) for name, part in parts.items()}


def _is_image(dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """Rows that are RGB frames: encoded as PNG in Lance, compressed frame by frame in HDF5."""
    return dtype == np.uint8 and len(shape) == 3 and shape[2] == 3


def _blocks(store: EpisodeStore, schema: Schema) -> list[slice]:
    """Row ranges of about BLOCK_BYTES decoded."""
    row_bytes = sum(dtype.itemsize * int(np.prod(shape)) for dtype, shape in schema.values())
    step = max(1, BLOCK_BYTES // max(1, row_bytes))
    return [slice(s, min(s + step, store.num_rows)) for s in range(0, store.num_rows, step)]


def _write_hdf5(store: EpisodeStore, tmp: Path, advance: Callable[[int], None]) -> None:
    """The HDF5 layout with the chunking and compression of lewm's own files, every column in
    the dtype it has in ``store``."""
    schema = _schema(store)
    n = store.num_rows
    with h5py.File(tmp, "w", libver="latest") as f:
        for key in sorted(store.attrs):
            f.attrs[key] = store.attrs[key]
        for name in INDEX_COLUMNS:
            f.create_dataset(name, data=store.read(name, slice(None)), track_times=False)
        datasets = {}
        for name, (dtype, shape) in schema.items():
            image = _is_image(dtype, shape)
            datasets[name] = f.create_dataset(
                name,
                shape=(n, *shape),
                dtype=dtype,
                chunks=(1 if image else min(n, TABLE_CHUNK_ROWS), *shape),
                track_times=False,
                **(PIXEL_COMPRESSION if image else {}),
            )
        for rows in _blocks(store, schema):
            for name, ds in datasets.items():
                ds[rows] = store.read(name, rows)
            advance(rows.stop - rows.start)


def _write_lance(
    store: EpisodeStore, folder: Path, out: Path, advance: Callable[[int], None]
) -> None:
    """The platform's layout in ``folder`` (staged for ``out``): ``episode_idx`` and
    ``step_idx`` first, then one field per column, frames as PNG; the metadata keeps what a
    round trip needs."""
    import pyarrow as pa

    schema = _schema(store)
    episodes = _episode_source(store)
    order = [episodes, STEP_FIELD, "pixels", "action"]
    order += sorted(set(schema) - set(order))
    fields = [_lance_field(store, name, *schema[name], episodes) for name in order]
    taken: dict[str, str] = {}
    for name, field in zip(order, fields, strict=True):
        if field.name in taken:
            raise ValueError(
                f"{store.path}: columns {taken[field.name]!r} and {name!r} would both be "
                f"stored as {field.name!r} (Lance names cannot hold '.')"
            )
        taken[field.name] = name
    index_dtypes = {name: str(store.read(name, slice(0, 0)).dtype) for name in INDEX_COLUMNS}
    try:
        attrs = json.dumps(store.attrs, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{store.path}: attributes cannot be stored as JSON: {exc}") from None
    arrow_schema = pa.schema(
        fields, metadata={ATTRS_KEY: attrs.encode(), INDEX_DTYPES_KEY: json.dumps(index_dtypes)}
    )

    # Lance reports an exception raised while it pulls batches (a Ctrl-C, a damaged source)
    # as an OSError holding its traceback text: keep the original to raise instead.
    failure: list[BaseException] = []

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            for rows in _blocks(store, schema):
                arrays = [
                    _arrow(store.read(name, rows), field)
                    for name, field in zip(order, fields, strict=True)
                ]
                yield pa.record_batch(arrays, schema=arrow_schema)
                advance(rows.stop - rows.start)
        except BaseException as exc:
            failure.append(exc)
            raise

    reader = pa.RecordBatchReader.from_batches(arrow_schema, batches())
    try:
        lance_module(out).write_dataset(reader, str(folder), schema=arrow_schema, mode="create")
    except OSError as exc:
        if failure:
            raise failure[0] from None
        raise _write_error(exc, out) from None


def _write_error(exc: OSError, out: Path) -> OSError:
    """Lance's write failure as one line naming ``out``, with the errno when it gives one
    ("os error 28"), so that a full disk reads as one."""
    found = re.search(r"os error (\d+)", str(exc))
    if found:
        code = int(found[1])
        return OSError(code, os.strerror(code), str(out))
    return OSError(f"{out}: writing the Lance dataset failed: {one_line(exc)}")


def _episode_source(store: EpisodeStore) -> str:
    """The column stored as ``episode_idx``, checked to change exactly where episodes start:
    the Lance layout has no ep_len/ep_offset, its readers find episodes by that column."""
    name = EPISODE_FIELD if EPISODE_FIELD in store.columns else store.episode_column
    ids = store.read(name, slice(None))
    steps = np.diff(ids) if ids.ndim == 1 and ids.dtype.kind in "iu" else None
    if steps is None or (steps < 0).any() or not np.array_equal(
        np.flatnonzero(steps) + 1, store.ep_offset[1:]
    ):
        raise ValueError(
            f"{store.path}: column {name!r} does not mark the episodes of ep_len/ep_offset "
            "(one integer per row, rising exactly where an episode starts); Lance datasets "
            "keep episodes only in that column"
        )
    return name


def _lance_field(
    store: EpisodeStore, name: str, dtype: np.dtype, shape: tuple[int, ...], episodes: str
) -> Any:
    """The Arrow field of one column. The metadata records the HDF5 name where Lance's
    differs, and the row shape where a list alone does not say it."""
    import pyarrow as pa

    stored = EPISODE_FIELD if name == episodes else name.replace(".", "_")
    meta = {NAME_KEY: name.encode()} if stored != name else {}
    if _is_image(dtype, shape):
        meta[SHAPE_KEY] = json.dumps(list(shape)).encode()
        return pa.field(stored, pa.binary(), metadata=meta)
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{store.path}: column {name!r}: {dtype} values; Lance conversion stores numbers "
            "and RGB frames only"
        )
    value = pa.from_numpy_dtype(dtype)
    if not shape:
        return pa.field(stored, value, metadata=meta or None)
    if len(shape) != 1:
        meta[SHAPE_KEY] = json.dumps(list(shape)).encode()
    return pa.field(stored, pa.list_(value, int(np.prod(shape))), metadata=meta or None)


def _arrow(block: np.ndarray, field: Any) -> Any:
    """Rows of one column as the Arrow array ``field`` describes."""
    import pyarrow as pa

    if pa.types.is_binary(field.type):
        return pa.array(_encode_frames(block), type=pa.binary())
    if pa.types.is_fixed_size_list(field.type):
        values = pa.array(np.ascontiguousarray(block).reshape(-1), type=field.type.value_type)
        return pa.FixedSizeListArray.from_arrays(values, type=field.type)
    return pa.array(block, type=field.type)


def encode_frame(frame: np.ndarray) -> bytes:
    """A frame as PNG: lossless, and the platform's reader opens it as it opens its JPEGs."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def _encode_frames(frames: np.ndarray) -> list[bytes]:
    """PNG frames, on all CPUs when there are enough (Pillow releases the GIL to encode)."""
    if len(frames) < PARALLEL_FRAMES:
        return [encode_frame(frame) for frame in frames]
    with ThreadPoolExecutor(available_cpus()) as pool:
        return list(pool.map(encode_frame, frames))
