"""Datasets in the official layout (DATAFORMAT.md §1–2): read with the right clips, and
`lewm inspect` reporting their contents and layout problems."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from lewm.cli import app
from lewm.data import ClipDataset, EpisodeStore, Normalizer
from lewm.interop import inspect_dataset, write_official_layout

LENS = (23, 11, 30)
SIZE = 16
runner = CliRunner()


def official_columns(lens=LENS, index: str = "ep_idx", size: int = SIZE) -> dict:
    """Rows encode (episode, step): pixels channel 0 = step, channel 1 = episode; action =
    (episode, step) with the NaN last row; the extra columns the official files carry."""
    n = sum(lens)
    ep = np.repeat(np.arange(len(lens)), lens)
    step = np.concatenate([np.arange(k) for k in lens])
    pixels = np.zeros((n, size, size, 3), dtype=np.uint8)
    pixels[..., 0] = step[:, None, None]
    pixels[..., 1] = ep[:, None, None]
    action = np.stack([ep, step], axis=1).astype(np.float32)
    action[np.cumsum(lens) - 1] = np.nan
    reward = np.where(step == 0, np.nan, 1.0)
    return {
        "ep_len": np.asarray(lens, dtype=np.int32),
        "ep_offset": np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64),
        "pixels": pixels,
        "action": action,
        "step_idx": step.astype(np.int64),
        index: ep.astype(np.int32),
        "privileged_block_0_pos": np.random.default_rng(0).normal(size=(n, 3)),
        "proprio_joint_pos": np.random.default_rng(1).normal(size=(n, 7)).astype(np.float32),
        "reward": reward,
        "terminated": step == np.repeat(np.asarray(lens) - 1, lens),
    }


@pytest.mark.parametrize("index", ["ep_idx", "episode_idx"])
@pytest.mark.parametrize("cache", ["all", "none"])
def test_official_layout_reads_with_the_right_clips(tmp_path, index, cache):
    path = write_official_layout(tmp_path / "official.h5", official_columns(index=index))
    with h5py.File(path) as f:
        assert 32001 in f["pixels"].filter_ids
    with EpisodeStore(path, cache=cache) as store:
        assert store.episode_column == index
        assert "privileged_block_0_pos" in store.columns
        norm = Normalizer.fit(store, ("action",))
        clips = ClipDataset(store, np.arange(3), num_steps=4, frameskip=5, normalizer=norm)
        # 4 frames 5 steps apart need 20 rows: 23-19 + 0 + 30-19 starts (episode 1 too short)
        assert len(clips) == 4 + 0 + 11
        clip = clips[len(clips) - 1]  # the last start of episode 2: rows 10..29, NaN at 29
    np.testing.assert_array_equal(clip["pixels"][:, 0, 0, 0].numpy(), [10, 15, 20, 25])
    np.testing.assert_array_equal(clip["pixels"][:, 1, 0, 0].numpy(), [2, 2, 2, 2])
    raw = np.stack([np.full(20, 2.0), np.arange(10, 30)], axis=1)
    raw[-1] = np.nan
    expected = np.nan_to_num((raw - norm.mean["action"]) / norm.std["action"], nan=0.0)
    np.testing.assert_allclose(clip["action"].numpy(), expected.reshape(4, 10), rtol=1e-5)
    assert clip["action"][3, -1] == 0.0  # the episode's NaN last action


def test_official_layout_inspects_clean(tmp_path):
    path = write_official_layout(tmp_path / "official.h5", official_columns())
    report = inspect_dataset(path)
    assert report.problems == []
    assert (report.episodes, report.rows, report.action_dim) == (3, sum(LENS), 2)
    assert report.image_shape == (SIZE, SIZE)
    assert report.episode_column == "ep_idx"
    assert report.episode_length == (11, sum(LENS) / 3, 30)
    columns = {c.name: c for c in report.columns}
    assert columns["pixels"].compression == "blosc"
    assert columns["pixels"].chunks == (100, SIZE, SIZE, 3)
    assert columns["privileged_block_0_pos"].shape == (sum(LENS), 3)
    valid = official_columns()["action"]
    np.testing.assert_allclose(report.action_mean, np.nanmean(valid, axis=0), rtol=1e-6)
    np.testing.assert_allclose(report.action_max, [2, 28])


def no_nan_last(c):
    c["action"][LENS[0] - 1] = 0.0


def nan_inside(c):
    c["action"][5, 1] = np.nan


def both_spellings(c):
    c["episode_idx"] = c["ep_idx"].copy()


def wrong_episode_index(c):
    c["ep_idx"][3] = 2


def wrong_step_idx(c):
    c["step_idx"][4] = 0


def non_square(c):
    c["pixels"] = c["pixels"][:, :, :8]


def no_index(c):
    del c["ep_idx"]


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (no_nan_last, "1 of 3 episodes lack the NaN last row"),
        (nan_inside, "NaN in 1 rows that are not an episode's last (first: row 5)"),
        (both_spellings, "both ep_idx and episode_idx present"),
        (wrong_episode_index, "'ep_idx' disagrees with ep_len/ep_offset at 1 rows"),
        (wrong_step_idx, "'step_idx' does not count"),
        (non_square, "expected square images"),
        (no_index, "no episode index column"),
    ],
)
def test_inspect_flags_layout_problems(tmp_path, breaker, message):
    columns = official_columns()
    breaker(columns)
    report = inspect_dataset(write_official_layout(tmp_path / "bad.h5", columns))
    assert any(message in p for p in report.problems), report.problems


def test_cli_inspect(tmp_path):
    good = write_official_layout(tmp_path / "good.h5", official_columns())
    result = runner.invoke(app, ["inspect", str(good)])
    assert result.exit_code == 0, result.output
    for text in ("blosc", "privileged", "16x16", "no layout problems"):
        assert text in result.output
    columns = official_columns()
    nan_inside(columns)
    bad = write_official_layout(tmp_path / "bad.h5", columns)
    result = runner.invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 1
    assert "problem:" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "missing.h5")])
    assert result.exit_code == 2
    assert "missing.h5" in result.output and "Traceback" not in result.output
