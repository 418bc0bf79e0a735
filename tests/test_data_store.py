"""EpisodeWriter → EpisodeStore round trips, and the errors a bad file must produce."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lewm.data import (
    DataFileError,
    EpisodeStore,
    EpisodeWriter,
    ShardedEpisodeStore,
    open_store,
    shard_path,
)

SIZE = 8


def episode(k: int, ep: int) -> dict[str, np.ndarray]:
    """k env steps = k + 1 rows whose values encode (episode, step)."""
    rows = k + 1
    step = np.arange(rows)
    pixels = np.zeros((rows, SIZE, SIZE, 3), dtype=np.uint8)
    pixels[..., 0] = step[:, None, None]
    pixels[..., 1] = ep
    action = np.stack([np.full(rows, ep), step], axis=1).astype(np.float32)
    action[-1] = np.nan
    proprio = np.stack([step * 0.5, np.full(rows, ep + 0.25)], axis=1).astype(np.float32)
    return {"pixels": pixels, "action": action, "proprio": proprio}


EPISODE_STEPS = (4, 2, 6)


def write_file(path: Path, steps=EPISODE_STEPS, **kwargs) -> Path:
    with EpisodeWriter(path, attrs={"env": "toy", "resolution": SIZE}, **kwargs) as writer:
        for ep, k in enumerate(steps):
            writer.add_episode(episode(k, ep))
    return path


def raw_columns(lens=(3, 2)) -> dict[str, np.ndarray]:
    """A valid file's datasets, built without EpisodeWriter, for breaking one at a time."""
    n = sum(lens)
    action = np.zeros((n, 2), dtype=np.float32)
    action[np.cumsum(lens) - 1] = np.nan
    return {
        "ep_len": np.asarray(lens, dtype=np.int32),
        "ep_offset": np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64),
        "pixels": np.zeros((n, SIZE, SIZE, 3), dtype=np.uint8),
        "action": action,
        "step_idx": np.concatenate([np.arange(k) for k in lens]).astype(np.int32),
        "ep_idx": np.repeat(np.arange(len(lens)), lens).astype(np.int32),
    }


def write_raw(path: Path, columns: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for name, value in columns.items():
            f.create_dataset(name, data=value)
    return path


def test_round_trip(tmp_path):
    path = write_file(tmp_path / "toy.h5")
    with h5py.File(path) as f:
        assert f["ep_len"].dtype == np.int32
        assert f["ep_offset"].dtype == np.int64
        assert f["ep_idx"].dtype == np.int32
        assert f["action"].dtype == np.float32
    episodes = [episode(k, ep) for ep, k in enumerate(EPISODE_STEPS)]
    for cache in ("all", "none"):
        with EpisodeStore(path, cache=cache) as store:
            assert store.cached == (cache == "all")
            assert store.num_episodes == 3
            assert store.num_rows == 15
            np.testing.assert_array_equal(store.ep_len, [5, 3, 7])
            np.testing.assert_array_equal(store.ep_offset, [0, 5, 8])
            assert store.ep_len.dtype == store.ep_offset.dtype == np.int64
            assert (store.image_size, store.action_dim) == (SIZE, 2)
            assert store.env_name == "toy"
            assert store.attrs == {"env": "toy", "resolution": SIZE}
            assert store.columns == (
                "action",
                "ep_idx",
                "ep_len",
                "ep_offset",
                "pixels",
                "proprio",
                "step_idx",
            )
            all_rows = slice(None)
            for name in ("pixels", "action", "proprio"):
                expected = np.concatenate([e[name] for e in episodes])
                np.testing.assert_array_equal(store.read(name, all_rows), expected)
            np.testing.assert_array_equal(
                store.read("step_idx", all_rows), [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6]
            )
            np.testing.assert_array_equal(
                store.read("ep_idx", all_rows), [0] * 5 + [1] * 3 + [2] * 7
            )
            nan_rows = np.flatnonzero(np.isnan(store.read("action", all_rows)).all(axis=1))
            np.testing.assert_array_equal(nan_rows, store.ep_offset + store.ep_len - 1)
            # Unsorted, repeated and 2-D row indices come back in the order asked for.
            rows = np.array([[9, 2], [2, 14]])
            pixels = store.read("pixels", rows)
            assert pixels.shape == (2, 2, SIZE, SIZE, 3)
            np.testing.assert_array_equal(pixels[..., 0, 0, 0], [[1, 2], [2, 6]])
            np.testing.assert_array_equal(pixels[..., 0, 0, 1], [[2, 0], [0, 2]])
            # Reads are never a writable window into the store's RAM copy.
            view = store.read("action", slice(0, 3))
            with pytest.raises(ValueError, match="read-only"):
                view[0] = 1.0
            pixels[:] = 0
            assert store.read("pixels", np.array([9]))[0, 0, 0, 0] == 1


def test_identical_inputs_give_identical_bytes(tmp_path):
    steps = (40, 300, 7)  # crosses the writer's flush size, so buffering is exercised
    a = write_file(tmp_path / "a.h5", steps=steps, image_chunk=4)
    time.sleep(1.1)  # HDF5 timestamps have 1 s resolution; none may be stored
    b = write_file(tmp_path / "b.h5", steps=steps, image_chunk=4)
    assert a.read_bytes() == b.read_bytes()
    with h5py.File(a) as f:
        assert f["pixels"].chunks == (4, SIZE, SIZE, 3)
        assert f["pixels"].compression is not None
    with EpisodeStore(a) as store:
        np.testing.assert_array_equal(store.ep_len, [41, 301, 8])
        np.testing.assert_array_equal(
            store.read("pixels", slice(None)),
            np.concatenate([episode(k, ep)["pixels"] for ep, k in enumerate(steps)]),
        )


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), EpisodeWriter(tmp_path / "x.h5") as writer:
        writer.add_episode(episode(3, 0))
        raise RuntimeError("boom")
    with pytest.raises(ValueError, match="no episodes"), EpisodeWriter(tmp_path / "y.h5"):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e["action"].__setitem__(-1, 0.0), "NaN on the last row"),
        (lambda e: e["action"].__setitem__(0, np.nan), "NaN on the last row"),
        (lambda e: e.__setitem__("pixels", e["pixels"].astype(np.float32)), "'pixels'"),
        (lambda e: e.__setitem__("proprio", e["proprio"][:-1]), "'proprio'"),
        (lambda e: e.__setitem__("step_idx", np.arange(4)), "'step_idx' is written by"),
        (lambda e: e.pop("action"), "missing column 'action'"),
        (lambda e: e.__setitem__("proprio/joint", e["proprio"]), "would create an HDF5 group"),
    ],
)
def test_writer_rejects_bad_episodes(tmp_path, change, message):
    bad = episode(3, 0)
    change(bad)
    with EpisodeWriter(tmp_path / "x.h5") as writer:
        writer.add_episode(episode(2, 0))
        with pytest.raises(ValueError, match=message):
            writer.add_episode(bad)


def test_writer_rejects_episode_unlike_the_first(tmp_path):
    with EpisodeWriter(tmp_path / "x.h5") as writer:
        writer.add_episode(episode(3, 0))
        other = episode(3, 1)
        other["proprio"] = other["proprio"][:, :1]
        with pytest.raises(ValueError, match="'proprio'.*as in episode 0"):
            writer.add_episode(other)


def test_missing_file(tmp_path):
    with pytest.raises(DataFileError, match="no such file") as err:
        EpisodeStore(tmp_path / "absent.h5")
    assert str(err.value).startswith(str(tmp_path / "absent.h5"))


def test_text_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("this is not HDF5\n" * 100)
    with pytest.raises(DataFileError, match="not an HDF5 file") as err:
        EpisodeStore(path)
    assert str(err.value).startswith(str(path))


def test_truncated_file(tmp_path):
    path = write_file(tmp_path / "cut.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match="truncated") as err:
        EpisodeStore(path)
    assert str(err.value).startswith(str(path))


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("action", None, "column 'action': missing column"),
        ("step_idx", None, "column 'step_idx': missing column"),
        ("ep_idx", None, "'ep_idx' or 'episode_idx'"),
        (
            "pixels",
            np.zeros((5, SIZE, SIZE, 3), np.float32),
            "column 'pixels': expected dtype uint8",
        ),
        (
            "pixels",
            np.zeros((5, SIZE, SIZE), np.uint8),
            r"column 'pixels': expected shape \(N, H, W, 3\)",
        ),
        ("pixels", np.zeros((5, SIZE, SIZE + 1, 3), np.uint8), "column 'pixels': expected square"),
        ("action", np.zeros((5, 2), np.int64), "column 'action': expected a float array"),
        ("action", np.zeros((4, 2), np.float32), "column 'action': expected 5 rows"),
        ("ep_len", np.array([3, 3], np.int32), "column 'ep_len': expected lengths summing to 5"),
        ("ep_offset", np.array([0, 2], np.int64), "column 'ep_offset': expected episodes stored"),
    ],
)
def test_bad_columns(tmp_path, column, value, message):
    columns = raw_columns()
    if value is None:
        del columns[column]
    else:
        columns[column] = value
    path = write_raw(tmp_path / "bad.h5", columns)
    with pytest.raises(DataFileError, match=message) as err:
        EpisodeStore(path)
    assert str(err.value).startswith(str(path))


@pytest.mark.parametrize("name", ["ep_idx", "episode_idx"])
def test_both_episode_index_spellings(tmp_path, name):
    columns = raw_columns()
    columns[name] = columns.pop("ep_idx")
    with EpisodeStore(write_raw(tmp_path / "x.h5", columns)) as store:
        assert store.episode_column == name
        np.testing.assert_array_equal(store.read(name, slice(None)), [0, 0, 0, 1, 1])


def test_unknown_column_lists_columns(tmp_path):
    store = EpisodeStore(write_file(tmp_path / "toy.h5"))
    with pytest.raises(DataFileError, match="'reward': no such column.*action, ep_idx"):
        store.read("reward", slice(None))


def test_pickled_store_reads(tmp_path):
    path = write_file(tmp_path / "toy.h5")
    for cache in ("all", "none"):
        store = EpisodeStore(path, cache=cache)
        before = store.read("pixels", np.array([3, 7]))  # opens the handle before pickling
        copy = pickle.loads(pickle.dumps(store))
        np.testing.assert_array_equal(copy.read("pixels", np.array([3, 7])), before)
        assert copy.cached == store.cached
        assert not copy.read("action", slice(0, 2)).flags.writeable
        copy.close()
        store.close()


def test_open_store_picks_sharded_or_plain(tmp_path):
    single = write_file(tmp_path / "one.h5")
    dataset = tmp_path / "data.h5"
    for i in range(2):
        write_file(shard_path(dataset, i, 2))
    with open_store(single) as plain, open_store(dataset, cache="none") as sharded:
        assert type(plain) is EpisodeStore
        assert type(sharded) is ShardedEpisodeStore
        assert sharded.num_episodes == 2 * len(EPISODE_STEPS) and not sharded.cached
    with pytest.raises(DataFileError, match="absent.h5: no such file"):
        open_store(tmp_path / "absent.h5")
    # EpisodeStore itself reads one file: a sharded dataset goes through open_store.
    with pytest.raises(DataFileError, match="data.h5: no such file"):
        EpisodeStore(dataset)


def test_store_module_does_not_import_shards(tmp_path):
    """shards.py builds on store.py; store.py must work without it, at import and at use
    (open, read, pickle), or the two modules are a circle again."""
    path = write_file(tmp_path / "toy.h5")
    code = textwrap.dedent(f"""
        import importlib.util, pickle, sys, types
        # lewm/data/__init__.py imports every data module; stand in for it with a bare
        # package so that only what store.py itself imports gets imported.
        package = types.ModuleType("lewm.data")
        package.__path__ = list(importlib.util.find_spec("lewm.data").submodule_search_locations)
        sys.modules["lewm.data"] = package
        from lewm.data.store import EpisodeStore
        with EpisodeStore({str(path)!r}, cache="none") as store:
            copy = pickle.loads(pickle.dumps(store))
            copy.read("pixels", slice(0, 2))
            copy.close()
        try:  # a missing path is where the store once looked for shards
            EpisodeStore({str(tmp_path / "absent.h5")!r})
        except ValueError:
            pass
        imported = sorted(m for m in sys.modules if m.startswith("lewm."))
        assert "lewm.data.shards" not in sys.modules, imported
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_bad_cache_mode(tmp_path):
    with pytest.raises(ValueError, match="cache='sometimes'"):
        EpisodeStore(write_file(tmp_path / "toy.h5"), cache="sometimes")


def test_blosc_without_hdf5plugin_says_what_to_install(tmp_path, monkeypatch):
    hdf5plugin = pytest.importorskip("hdf5plugin")
    columns = raw_columns()
    path = tmp_path / "blosc.h5"
    with h5py.File(path, "w") as f:
        for name, value in columns.items():
            extra = hdf5plugin.Blosc(cname="lz4") if name == "pixels" else {}
            f.create_dataset(name, data=value, **extra)
    available = h5py.h5z.filter_avail
    monkeypatch.setattr(h5py.h5z, "filter_avail", lambda code: code != 32001 and available(code))
    with pytest.raises(DataFileError, match="'pixels'.*32001.*pip install hdf5plugin"):
        EpisodeStore(path)


def test_extra_columns_of_the_current_writer_read_as_stored(tmp_path):
    columns = raw_columns()
    columns["terminated"] = np.array([False, False, True, False, True])
    path = write_raw(tmp_path / "x.h5", columns)
    with h5py.File(path, "a") as f:
        f.create_dataset("id", data=["a", "b", "c", "d", "e"], dtype=h5py.string_dtype())
    with EpisodeStore(path) as store:
        assert store.read("id", np.array([4, 0])).tolist() == [b"e", b"a"]
        assert store.read("terminated", slice(None)).sum() == 2
