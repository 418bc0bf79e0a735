"""Lance datasets (the stable-worldmodel platform's format): read through the same store as
HDF5, written in the platform's layout, converted both ways without loss."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import h5py
import lance
import numpy as np
import pyarrow as pa
import pytest
from conftest import SMALL_MODEL, add_to_cache
from huggingface_hub import constants
from PIL import Image
from test_interop_data import official_columns
from torch.utils.data import DataLoader
from typer.testing import CliRunner

import lewm.data.convert as convert_module
from lewm.cli import app
from lewm.data import (
    ClipDataset,
    DataFileError,
    EpisodeStore,
    LanceEpisodeStore,
    Normalizer,
    collect,
    open_store,
)
from lewm.data.convert import convert
from lewm.interop import inspect_dataset, write_official_layout

runner = CliRunner()


def h5_contents(path: Path) -> tuple[dict, dict]:
    """Every dataset (values, dtype, shape) and attribute of an HDF5 file, as stored."""
    with h5py.File(path) as f:
        columns = {name: f[name][()] for name in f}
        attrs = {key: f.attrs[key] for key in f.attrs}
    return columns, attrs


def assert_same_columns(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # NaN equals NaN


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".part" in p.name or p.name.endswith(".lock")]


def test_hdf5_to_lance_to_hdf5_is_identical(tworoom_file, tmp_path):
    lance_path = convert(tworoom_file, tmp_path / "tworoom.lance")
    back = convert(lance_path, tmp_path / "back.h5")
    columns, attrs = h5_contents(tworoom_file)
    columns_back, attrs_back = h5_contents(back)
    assert_same_columns(columns, columns_back)
    assert attrs.keys() == attrs_back.keys()
    for key, value in attrs.items():
        assert type(value) is type(attrs_back[key]) and value == attrs_back[key], key

    # The Lance dataset itself reads as the HDF5 file does.
    with EpisodeStore(tworoom_file) as h5, LanceEpisodeStore(lance_path, cache="none") as ds:
        assert ds.columns == h5.columns and ds.attrs == h5.attrs and ds.render == h5.render
        assert (ds.env_name, ds.image_size, ds.action_dim) == ("tworoom", 64, 2)
        assert ds.episode_column == h5.episode_column == "ep_idx"
        np.testing.assert_array_equal(ds.ep_len, h5.ep_len)
        np.testing.assert_array_equal(ds.ep_offset, h5.ep_offset)
        rows = np.array([[7, 3], [3, -1]])  # any shape, order, repeats, negative rows
        np.testing.assert_array_equal(ds.read("pixels", rows), h5.read("pixels", rows))
        assert not ds.cached
        ds.require_finite(["proprio", "state"])
    # ... in the platform's layout: index columns first, frames as (lossless) PNG.
    stored = lance.dataset(lance_path)
    assert stored.schema.names[:4] == ["episode_idx", "step_idx", "pixels", "action"]
    assert stored.schema.field("episode_idx").type == pa.int32()
    assert stored.schema.field("action").type == pa.list_(pa.float32(), 2)
    assert stored.take([0], columns=["pixels"]).column(0)[0].as_py().startswith(b"\x89PNG")


@pytest.mark.parametrize("index", ["ep_idx", "episode_idx"])
def test_official_layout_through_lance_gives_the_same_clips(tmp_path, index):
    h5 = write_official_layout(tmp_path / "official.h5", official_columns(index=index))
    converted = convert(h5, tmp_path / "official.lance")
    clips = {}
    for path, cache in ((h5, "all"), (converted, "none"), (converted, "all")):
        with open_store(path, cache=cache) as store:
            norm = Normalizer.fit(store, ("action",))
            dataset = ClipDataset(store, np.arange(3), num_steps=4, frameskip=5, normalizer=norm)
            clips[path, cache] = [dataset[i] for i in range(len(dataset))]
    reference = clips[h5, "all"]
    assert len(reference) == 15
    for key, got in clips.items():
        for a, b in zip(reference, got, strict=True):
            for name in a:
                np.testing.assert_array_equal(a[name].numpy(), b[name].numpy(), err_msg=str(key))
    # Float64, int64 and bool columns come back in their own dtypes.
    assert_same_columns(h5_contents(h5)[0], h5_contents(convert(converted, tmp_path / "b.h5"))[0])


def test_store_pickles_into_dataloader_workers(tworoom_file, tmp_path):
    path = convert(tworoom_file, tmp_path / "t.lance")
    store = open_store(path, cache="none")
    store.read("pixels", np.arange(3))  # a handle opened in this process first
    clone = pickle.loads(pickle.dumps(store))
    rows = np.arange(5)
    np.testing.assert_array_equal(clone.read("pixels", rows), store.read("pixels", rows))
    norm = Normalizer.fit(store, ("action",))
    dataset = ClipDataset(store, np.arange(store.num_episodes), 4, 5, norm)
    assert store.worker_start == "spawn"  # Lance crashes in forked readers
    loader = DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    batch = next(iter(loader))
    expected = [dataset[i]["pixels"].numpy() for i in range(4)]
    np.testing.assert_array_equal(batch["pixels"].numpy(), np.stack(expected))


def platform_frames(lens: tuple[int, ...], size: int) -> np.ndarray:
    """Flat-coloured frames (what JPEG keeps almost exactly): red = step, green = episode."""
    ep = np.repeat(np.arange(len(lens)), lens)
    step = np.concatenate([np.arange(k) for k in lens])
    frames = np.full((len(ep), size, size, 3), 128, dtype=np.uint8)
    frames[..., 0] = (20 * step)[:, None, None]
    frames[..., 1] = (60 * ep)[:, None, None]
    return frames


def write_platform_dataset(path: Path, lens: tuple[int, ...], size: int = 32) -> dict:
    """A table as the platform's Lance writer lays it out: one append per episode; int32
    episode_idx and step_idx first; JPEG (quality 95) frames in a binary column; other columns
    fixed-size float32 lists; no ep_len/ep_offset and no metadata."""
    frames = platform_frames(lens, size)
    rng = np.random.default_rng(0)
    action = rng.normal(size=(len(frames), 2)).astype(np.float32)
    action[np.cumsum(lens) - 1] = np.nan
    proprio = rng.normal(size=(len(frames), 4)).astype(np.float32)
    schema = pa.schema([
        pa.field("episode_idx", pa.int32()),
        pa.field("step_idx", pa.int32()),
        pa.field("pixels", pa.binary()),
        pa.field("action", pa.list_(pa.float32(), 2)),
        pa.field("proprio", pa.list_(pa.float32(), 4)),
    ])  # fmt: skip
    start = 0
    for episode, length in enumerate(lens):
        rows = slice(start, start + length)
        jpegs = []
        for frame in frames[rows]:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
            jpegs.append(buffer.getvalue())
        batch = pa.record_batch([
            pa.array(np.full(length, episode, dtype=np.int32)),
            pa.array(np.arange(length, dtype=np.int32)),
            pa.array(jpegs, type=pa.binary()),
            pa.FixedSizeListArray.from_arrays(pa.array(action[rows].reshape(-1)), 2),
            pa.FixedSizeListArray.from_arrays(pa.array(proprio[rows].reshape(-1)), 4),
        ], schema=schema)  # fmt: skip
        lance.write_dataset(batch, path, schema=schema, mode="create" if episode == 0 else "append")
        start += length
    return {"pixels": frames, "action": action, "proprio": proprio}


def test_platform_dataset_reads_as_it_is(tmp_path):
    lens = (7, 5, 9)
    path = tmp_path / "db" / "tworoom.lance"
    expected = write_platform_dataset(path, lens)
    for name in (path, path.parent):  # the table, or the database folder holding it
        with open_store(name, cache="none") as store:
            assert isinstance(store, LanceEpisodeStore)
            assert (store.num_episodes, store.num_rows, store.image_size) == (3, 21, 32)
            np.testing.assert_array_equal(store.ep_len, lens)
            np.testing.assert_array_equal(store.ep_offset, [0, 7, 12])
            assert store.columns == (
                "action", "ep_len", "ep_offset", "episode_idx", "pixels", "proprio", "step_idx"
            )
            assert (store.env_name, store.attrs, store.episode_column) == (None, {}, "episode_idx")
            np.testing.assert_array_equal(store.read("action", slice(None)), expected["action"])
            np.testing.assert_array_equal(store.read("proprio", slice(None)), expected["proprio"])
            rows = np.array([20, 0, 8, 8])
            frames = store.read("pixels", rows).astype(int)
            assert np.abs(frames - expected["pixels"][rows]).max() <= 3  # JPEG, flat colours
            assert store.encoding("pixels") == "jpeg"
    # To HDF5, the decoded frames are kept exactly.
    h5 = convert(path, tmp_path / "platform.h5")
    with open_store(path) as ds, open_store(h5) as back:
        frames = ds.read("pixels", slice(None))
        np.testing.assert_array_equal(back.read("pixels", slice(None)), frames)
        np.testing.assert_array_equal(back.read("ep_len", slice(None)), lens)
        assert back.read("ep_len", slice(None)).dtype == np.int32
    report = inspect_dataset(path)
    assert (report.episodes, report.rows, report.image_shape) == (3, 21, (32, 32))
    assert {c.name: c.compression for c in report.columns}["pixels"] == "jpeg"


def test_convert_command_writes_and_refuses_to_overwrite(tworoom_file, tmp_path):
    out = tmp_path / "t.lance"
    result = runner.invoke(app, ["convert", str(tworoom_file), str(out)])
    assert result.exit_code == 0, result.output
    assert "12 episodes, 932 rows" in " ".join(result.output.split())
    before = sorted(p.name for p in (out / "data").iterdir())
    result = runner.invoke(app, ["convert", str(tworoom_file), str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert sorted(p.name for p in (out / "data").iterdir()) == before
    result = runner.invoke(app, ["convert", str(tworoom_file), str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["convert", str(out), str(tmp_path / "back.h5")])
    assert result.exit_code == 0, result.output
    # A folder that is not a Lance dataset is never replaced, even with --overwrite.
    other = tmp_path / "other.lance"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["convert", str(tworoom_file), str(other), "--overwrite"])
    assert result.exit_code == 2 and "not a Lance dataset" in result.output
    assert (other / "notes.txt").read_text() == "keep me"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("failure", [ValueError("encoder broke"), KeyboardInterrupt()])
def test_failed_conversion_leaves_the_old_output(tworoom_file, tmp_path, monkeypatch, failure):
    out = convert(tworoom_file, tmp_path / "t.lance")
    version = lance.dataset(out).version
    calls = 0

    def breaks(frame: np.ndarray) -> bytes:
        nonlocal calls
        calls += 1
        if calls > 40:
            raise failure
        return b""

    monkeypatch.setattr(convert_module, "encode_frame", breaks)
    monkeypatch.setattr(convert_module, "BLOCK_BYTES", 20 * 64 * 64 * 3)  # several batches
    with pytest.raises(type(failure)):
        convert(tworoom_file, out, overwrite=True)
    assert lance.dataset(out).version == version and lance.dataset(out).count_rows() > 0
    assert leftovers(tmp_path) == []


def test_collect_to_lance(tmp_path):
    out = tmp_path / "x.lance"
    args = ["collect", "tworoom", "--episodes", "2", "--resolution", "64"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    h5 = collect("tworoom", 2, tmp_path / "x.h5", resolution=64, progress=False)
    with open_store(out) as ds, open_store(h5) as reference:
        assert ds.attrs == reference.attrs and ds.attrs["env"] == "tworoom"
        for column in reference.columns:
            values = ds.read(column, slice(None))
            np.testing.assert_array_equal(values, reference.read(column, slice(None)))
    assert leftovers(tmp_path) == []
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output


def test_train_one_step_on_lance(tworoom_file, tmp_path):
    from lewm.config import resolve
    from lewm.train.fit import train

    data = convert(tworoom_file, tmp_path / "tworoom.lance")
    summary = train(data, tmp_path / "run", resolve("tiny", SMALL_MODEL, {"train.max_steps": 1}),
                    device="cpu", progress=False)
    assert summary["steps"] == 1


def test_damaged_or_foreign_folders_fail_in_one_line(tworoom_file, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    damaged = convert(tworoom_file, tmp_path / "damaged.lance")
    for part in (damaged / "data").iterdir():
        part.write_bytes(part.read_bytes()[:1000])
    emptied = shutil.copytree(damaged, tmp_path / "emptied.lance")
    shutil.rmtree(emptied / "_versions")
    (emptied / "_versions").mkdir()
    cases = {plain: "not a Lance dataset", damaged: "truncated or corrupt",
             emptied: "truncated or corrupt", tmp_path / "missing.lance": "no such"}
    for path, reason in cases.items():
        with pytest.raises(DataFileError, match=reason) as err:
            open_store(path)
        message = str(err.value)
        assert message.startswith(str(path)) and "\n" not in message and ".rs:" not in message
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert " ".join(result.output.split()).startswith(f"error: {path}")


def test_a_lance_dataset_opens_from_the_hugging_face_cache(tworoom_file, tmp_path, monkeypatch):
    """An hf:// path to a .lance folder fetches the folder (offline here: from the cache)."""
    local = convert(tworoom_file, tmp_path / "tworoom.lance")
    files = {f"data/{p.relative_to(local.parent)}": p for p in local.rglob("*") if p.is_file()}
    add_to_cache(tmp_path / "hub", "acme/toy", "dataset", files)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with open_store("hf://datasets/acme/toy/data/tworoom.lance") as store:
        assert isinstance(store, LanceEpisodeStore) and store.num_episodes == 12
