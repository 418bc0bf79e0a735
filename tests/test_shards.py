"""Sharded collection: a sharded dataset reads as the concatenation of its shards, and as the
unsharded collection with the same seed."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from lewm.cli import app
from lewm.data import (
    ClipDataset,
    DataFileError,
    EpisodeStore,
    Normalizer,
    ShardedEpisodeStore,
    collect,
    open_store,
)

EPISODES, SHARDS, SEED, RESOLUTION = 7, 3, 3, 16
# Episodes [i·7//3, (i+1)·7//3) of each shard.
BLOCKS = ((0, 2), (2, 4), (4, 7))


def collect_shards(folder, seed=SEED, resolution=RESOLUTION, shards=range(SHARDS)):
    return [
        collect(
            "tworoom",
            EPISODES,
            folder / "data.h5",
            resolution=resolution,
            seed=seed,
            progress=False,
            shard=(i, SHARDS),
        )
        for i in shards
    ]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    path = tmp_path_factory.mktemp("whole") / "data.h5"
    return collect("tworoom", EPISODES, path, resolution=RESOLUTION, seed=SEED, progress=False)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    collect_shards(folder)
    return folder / "data.h5"


@pytest.fixture
def copy(sharded, tmp_path):
    """A scratch copy of the sharded dataset, to break."""
    for path in sharded.parent.iterdir():
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_shard_files_and_attributes(sharded):
    names = sorted(p.name for p in sharded.parent.iterdir())
    assert names == [f"data-0000{i}-of-00003.h5" for i in range(SHARDS)]
    assert not sharded.exists()
    for i, (first, stop) in enumerate(BLOCKS):
        # A shard's own path opens just that shard, a valid file by itself.
        with open_store(sharded.parent / names[i]) as shard:
            assert type(shard) is EpisodeStore
            assert shard.num_episodes == stop - first
            assert shard.attrs["shard_index"] == i
            assert shard.attrs["shard_count"] == SHARDS
            assert shard.attrs["first_episode"] == first
            assert shard.attrs["total_episodes"] == EPISODES
            assert shard.read("ep_idx", slice(0, 1))[0] == 0


@pytest.mark.parametrize("cache", ["auto", "none"])
def test_shards_read_as_the_whole_collection(whole, sharded, cache):
    with EpisodeStore(whole, cache=cache) as one, open_store(sharded, cache=cache) as many:
        assert isinstance(many, ShardedEpisodeStore)
        assert many.cached == one.cached == (cache == "auto")
        for name in (
            "columns",
            "num_episodes",
            "num_rows",
            "image_size",
            "action_dim",
            "env_name",
            "episode_column",
        ):
            assert getattr(many, name) == getattr(one, name), name
        np.testing.assert_array_equal(many.ep_len, one.ep_len)
        np.testing.assert_array_equal(many.ep_offset, one.ep_offset)
        assert many.attrs == {**one.attrs, "shard_count": SHARDS, "total_episodes": EPISODES}
        for name in one.columns:
            a, b = one.read(name, slice(None)), many.read(name, slice(None))
            assert a.dtype == b.dtype, name
            np.testing.assert_array_equal(b, a, err_msg=name)
        for e in range(EPISODES):
            assert many.episode_rows(e) == one.episode_rows(e)
            rows = many.episode_rows(e)
            np.testing.assert_array_equal(many.read("pixels", rows), one.read("pixels", rows))


@pytest.mark.parametrize("cache", ["auto", "none"])
def test_rows_across_shards(whole, sharded, cache):
    with EpisodeStore(whole, cache=cache) as one, open_store(sharded, cache=cache) as many:
        boundary = int(one.ep_offset[BLOCKS[1][0]])
        rng = np.random.default_rng(0)
        selections = [
            slice(boundary - 3, boundary + 3),
            slice(boundary, boundary + 1),
            slice(5, -5),
            slice(None, None, 7),
            slice(-20, None),
            slice(boundary, boundary),
            rng.integers(0, one.num_rows, size=(5, 4)),  # unsorted, repeats, 2-D
            np.array([one.num_rows - 1, 0, -1, boundary, boundary - 1]),
            np.array([], dtype=np.int64),
        ]
        for rows in selections:
            for name in ("pixels", "action", "ep_idx", "step_idx", "proprio"):
                a, b = one.read(name, rows), many.read(name, rows)
                assert a.dtype == b.dtype and a.shape == b.shape, (name, rows)
                np.testing.assert_array_equal(b, a, err_msg=f"{name} {rows}")
        with pytest.raises(IndexError, match="rows must lie in"):
            many.read("action", np.array([one.num_rows]))
        with pytest.raises(DataFileError, match="'reward': no such column"):
            many.read("reward", slice(None))


def test_missing_shard(copy):
    (copy / "data-00001-of-00003.h5").unlink()
    with pytest.raises(DataFileError, match=r"data-00001-of-00003\.h5 is missing") as err:
        open_store(copy / "data.h5")
    assert str(err.value).startswith(str(copy / "data.h5"))


def test_shards_of_different_counts(copy):
    shutil.copy(copy / "data-00000-of-00003.h5", copy / "data-00000-of-00002.h5")
    with pytest.raises(DataFileError, match="different shard counts.*00002.*00003"):
        open_store(copy / "data.h5")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"seed": SEED + 1},
            "attribute 'seed': data-00000-of-00003.h5 has 3, data-00001-of-00003.h5 has 4",
        ),
        ({"resolution": 24}, "column 'pixels'"),
    ],
)
def test_mismatched_shard(copy, tmp_path_factory, change, message):
    other = tmp_path_factory.mktemp("other")
    collect_shards(other, **{"seed": SEED, "resolution": RESOLUTION, **change}, shards=[1])
    shutil.copy(other / "data-00001-of-00003.h5", copy / "data-00001-of-00003.h5")
    with pytest.raises(DataFileError, match=message):
        open_store(copy / "data.h5")


def test_shards_out_of_order(copy):
    first, second = copy / "data-00000-of-00003.h5", copy / "data-00001-of-00003.h5"
    first.rename(copy / "tmp.h5")
    second.rename(first)
    (copy / "tmp.h5").rename(second)
    with pytest.raises(DataFileError, match="00000-of-00003.h5: holds the episodes from 2 on"):
        open_store(copy / "data.h5")


def test_shard_workers_and_progress(tmp_path, capsys):
    """A shard made by a pool of workers is the same file; the bar names the shard."""
    one = collect(
        "tworoom",
        EPISODES,
        tmp_path / "a" / "d.h5",
        resolution=RESOLUTION,
        seed=SEED,
        shard=(1, SHARDS),
        progress=True,
    )
    assert "collect tworoom shard 1/3" in capsys.readouterr().out
    two = collect(
        "tworoom",
        EPISODES,
        tmp_path / "b" / "d.h5",
        resolution=RESOLUTION,
        seed=SEED,
        shard=(1, SHARDS),
        workers=2,
        progress=False,
    )
    assert one.read_bytes() == two.read_bytes()


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ((3, 3), "expected i/n"),
        ((-1, 3), "expected i/n"),
        ((0, 0), "expected i/n"),
        ((0, 8), "8 shards of 7 episodes"),
    ],
)
def test_bad_shard_arguments(tmp_path, shard, message):
    with pytest.raises(ValueError, match=message):
        collect("tworoom", EPISODES, tmp_path / "x.h5", progress=False, shard=shard)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["8/8", "3", "a/b", "-1/8", "3/8/1"])
def test_cli_rejects_bad_shard_text(tmp_path, text):
    out = tmp_path / "x.h5"
    result = CliRunner().invoke(app, ["collect", "tworoom", "--out", str(out), "--shard", text])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"--shard must look like i/n with 0 <= i < n, got '{text}'" in message
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_a_shard(tmp_path):
    args = [
        "collect",
        "tworoom",
        "--episodes",
        "4",
        "--resolution",
        "16",
        "--out",
        str(tmp_path / "d.h5"),
        "--shard",
        "1/2",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["d-00001-of-00002.h5"]


def test_clips_over_shards(whole, sharded):
    with EpisodeStore(whole) as one, open_store(sharded, cache="none") as many:
        norm = Normalizer.fit(one)
        np.testing.assert_array_equal(Normalizer.fit(many).mean["action"], norm.mean["action"])
        episodes = np.arange(EPISODES)
        a = ClipDataset(one, episodes, num_steps=3, frameskip=5, normalizer=norm)
        b = ClipDataset(many, episodes, num_steps=3, frameskip=5, normalizer=norm)
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            for key, value in a[i].items():
                assert value.equal(b[i][key]), (i, key)


@pytest.mark.parametrize("cache", ["auto", "none"])
def test_pickled_sharded_store(whole, sharded, cache):
    with EpisodeStore(whole) as one, open_store(sharded, cache=cache) as many:
        many.read("pixels", np.arange(3))  # opens handles, which pickle must leave behind
        copied = pickle.loads(pickle.dumps(many))
    with copied:
        assert type(copied) is ShardedEpisodeStore
        assert copied.cached == (cache == "auto")
        rows = np.array([0, int(one.ep_offset[BLOCKS[2][0]]), one.num_rows - 1, 40])
        for name in ("pixels", "ep_idx", "action"):
            np.testing.assert_array_equal(copied.read(name, rows), one.read(name, rows))
        view = copied.read("action", slice(0, 2))
        assert not view.flags.writeable
