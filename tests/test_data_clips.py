"""Clip sampling (DATAFORMAT.md §3), the episode split and the normalizer, checked on a
file whose values say which episode and row they came from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lewm.data import (
    ClipDataset,
    EpisodeStore,
    EpisodeWriter,
    Normalizer,
    clip_starts,
    split_episodes,
)

SIZE = 4
# Rows per episode. With 4 frames and frameskip 5 a clip spans 20 rows: episode 0 gives 6
# clips, episode 1 is one row short and gives none, episode 2 gives exactly one.
EPISODE_ROWS = (25, 19, 20, 7)


def write_file(path) -> EpisodeStore:
    """Action row r of episode e is (100·e + r, -r); pixels hold (e, r) in channels 0/1."""
    with EpisodeWriter(path) as writer:
        for ep, rows in enumerate(EPISODE_ROWS):
            r = np.arange(rows)
            pixels = np.zeros((rows, SIZE, SIZE, 3), dtype=np.uint8)
            pixels[..., 0] = ep
            pixels[..., 1] = r[:, None, None]
            action = np.stack([100.0 * ep + r, -r], axis=1).astype(np.float32)
            action[-1] = np.nan
            writer.add_episode({"pixels": pixels, "action": action})
    return EpisodeStore(path)


@pytest.fixture
def store(tmp_path):
    with write_file(tmp_path / "clips.h5") as s:
        yield s


def identity() -> Normalizer:
    return Normalizer({"action": np.zeros(2)}, {"action": np.ones(2)})


def test_clip_starts(store):
    offsets = store.ep_offset
    all_eps = np.arange(4)
    np.testing.assert_array_equal(clip_starts(store, all_eps, 4, 5), [*range(6), offsets[2]])
    # Starts follow the order of the episodes given.
    expected = np.concatenate([offsets[3] + np.arange(2), offsets[1] + np.arange(14)])
    np.testing.assert_array_equal(clip_starts(store, np.array([3, 1]), 2, 3), expected)
    assert len(clip_starts(store, all_eps, 4, 1)) == 22 + 16 + 17 + 4
    assert clip_starts(store, np.array([], dtype=int), 4, 5).shape == (0,)
    with pytest.raises(ValueError, match="episode ids"):
        clip_starts(store, np.array([4]), 4, 5)


def test_clip_contents(store):
    ds = ClipDataset(store, np.arange(4), num_steps=4, frameskip=5, normalizer=identity())
    assert len(ds) == 7
    for i, start in enumerate(ds.starts):
        ep = int(np.searchsorted(store.ep_offset, start, side="right") - 1)
        row = int(start - store.ep_offset[ep])
        item = ds[i]
        pixels, action = item["pixels"], item["action"]
        assert pixels.dtype == torch.uint8 and pixels.shape == (4, 3, SIZE, SIZE)
        assert action.dtype == torch.float32 and action.shape == (4, 10)
        # Frame k is row start + 5k, channels first.
        assert (pixels[:, 0] == ep).all()
        np.testing.assert_array_equal(pixels[:, 1, 0, 0], row + 5 * np.arange(4))
        # Block k holds rows start+5k .. start+5k+4, row-major: (a0x, a0y, a1x, a1y, ...).
        for k in range(4):
            expected = []
            for r in range(row + 5 * k, row + 5 * k + 5):
                last = r == EPISODE_ROWS[ep] - 1
                expected += [0.0, 0.0] if last else [100.0 * ep + r, -r]
            np.testing.assert_array_equal(action[k].numpy(), expected)
    # The last clip of episode 0 ends on its NaN row, which becomes 0.
    last = ds[5]["action"]
    assert torch.isfinite(last).all() and (last[3, -2:] == 0).all()


def test_clip_actions_are_z_scored(store):
    norm = Normalizer.fit(store)
    ds = ClipDataset(store, np.array([2]), num_steps=2, frameskip=3, normalizer=norm)
    start = int(ds.starts[4])
    raw = store.read("action", slice(start, start + 6))
    expected = ((raw - norm.mean["action"]) / norm.std["action"]).reshape(2, 6)
    np.testing.assert_allclose(ds[4]["action"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_loader_workers_read_uncached_pixels(tmp_path):
    store = write_file(tmp_path / "clips.h5")
    store = EpisodeStore(store.path, cache="none")
    ds = ClipDataset(store, np.arange(4), num_steps=2, frameskip=5, normalizer=identity())
    store.read("pixels", np.array([0]))  # a parent handle the worker must not reuse
    batches = list(DataLoader(ds, batch_size=8, num_workers=1))
    pixels = torch.cat([b["pixels"] for b in batches])
    episode = np.searchsorted(store.ep_offset, ds.starts, side="right") - 1
    np.testing.assert_array_equal(pixels[:, 0, 1, 0, 0], ds.starts - store.ep_offset[episode])


def test_split_episodes():
    train, val = split_episodes(50, 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45
    assert set(train).isdisjoint(val)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(50))
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    again = split_episodes(50, 0.1, seed=3)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(split_episodes(50, 0.1, seed=4)[1], val)


@pytest.mark.parametrize(
    ("episodes", "fraction", "num_val"),
    [(2, 0.01, 1), (2, 0.9, 1), (1, 0.5, 0), (10, 0.0, 0), (10, 0.25, 2)],
)
def test_split_sizes(episodes, fraction, num_val):
    train, val = split_episodes(episodes, fraction, seed=0)
    assert len(val) == num_val and len(train) == episodes - num_val


@pytest.mark.parametrize(("episodes", "fraction"), [(0, 0.1), (10, 1.0), (10, -0.1)])
def test_split_rejects(episodes, fraction):
    with pytest.raises(ValueError):
        split_episodes(episodes, fraction, seed=0)


def test_normalizer_fit_excludes_nan_rows(store):
    norm = Normalizer.fit(store)
    action = store.read("action", slice(None))
    finite = action[~np.isnan(action).any(axis=1)]
    assert len(finite) == store.num_rows - store.num_episodes
    np.testing.assert_allclose(norm.mean["action"], finite.mean(axis=0))
    np.testing.assert_allclose(norm.std["action"], finite.std(axis=0, ddof=1))
    rows = np.arange(5)
    part = Normalizer.fit(store, rows=rows)
    np.testing.assert_allclose(part.std["action"], action[rows].std(axis=0, ddof=1))


def test_normalizer_constant_dimension(tmp_path):
    with EpisodeWriter(tmp_path / "c.h5") as writer:
        action = np.ones((4, 2), dtype=np.float32)
        action[:, 1] = [1, 2, 3, np.nan]
        action[-1] = np.nan
        writer.add_episode({"pixels": np.zeros((4, SIZE, SIZE, 3), np.uint8), "action": action})
    with EpisodeStore(tmp_path / "c.h5") as store:
        norm = Normalizer.fit(store)
    np.testing.assert_allclose(norm.std["action"], [1.0, 1.0])
    assert np.isfinite(norm.transform("action", np.array([[5.0, 2.0]]))).all()


def test_normalizer_round_trip(store):
    norm = Normalizer.fit(store)
    raw = store.read("action", slice(0, 25))
    z = norm.transform("action", raw)
    assert z.dtype == np.float32 and np.isfinite(z).all() and (z[-1] == 0).all()
    np.testing.assert_allclose(norm.inverse("action", z)[:-1], raw[:-1], rtol=1e-5, atol=1e-4)
    zt = norm.transform("action", torch.from_numpy(raw.copy()))
    assert zt.dtype == torch.float32
    np.testing.assert_allclose(zt.numpy(), z, rtol=1e-6)
    np.testing.assert_allclose(
        norm.inverse("action", zt).numpy()[:-1], raw[:-1], rtol=1e-5, atol=1e-4
    )
    with pytest.raises(KeyError, match="proprio"):
        norm.transform("proprio", raw)


def test_normalizer_save_load(store, tmp_path):
    norm = Normalizer.fit(store)
    path = tmp_path / "norm.json"
    norm.save(path)
    loaded = Normalizer.load(path)
    np.testing.assert_array_equal(loaded.mean["action"], norm.mean["action"])
    np.testing.assert_array_equal(loaded.std["action"], norm.std["action"])
    assert Normalizer.from_dict(norm.to_dict()).to_dict() == norm.to_dict()


def test_normalizer_load_errors(tmp_path):
    path = tmp_path / "norm.json"
    with pytest.raises(ValueError, match="no such normalizer file"):
        Normalizer.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path}: not valid JSON"):
        Normalizer.load(path)
    path.write_text(json.dumps({"columns": {"action": {"mean": [0.0, 1.0]}}}))
    with pytest.raises(ValueError, match=f"{path}: field 'columns.action.std': missing"):
        Normalizer.load(path)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], "'columns'"),
        ({"columns": {"action": {"mean": ["a"], "std": [1.0]}}}, "'columns.action.mean'"),
        ({"columns": {"action": {"mean": [0.0], "std": [0.0]}}}, "'columns.action.std'"),
        ({"columns": {"action": {"mean": [0.0], "std": [1.0, 1.0]}}}, "'columns.action.std'"),
        ({"columns": {"action": {"mean": [None], "std": [1.0]}}}, "'columns.action.mean'"),
    ],
)
def test_normalizer_from_dict_errors(data, field):
    with pytest.raises(ValueError, match=f"ckpt: field {field}"):
        Normalizer.from_dict(data, source="ckpt")
