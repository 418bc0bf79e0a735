"""Real | imagined | goal: the decoded open-loop rollout of executed actions, in evaluation
videos, rollout-error videos and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lewm.analysis.decoder import imagine, load_decoder, reconstruct
from lewm.analysis.imagined import ImaginedMedia, imagined_frames, write_episode_videos
from lewm.checkpoint import load_checkpoint
from lewm.cli import app
from lewm.config import EvalConfig
from lewm.data import open_store, pixels_tensor
from lewm.plan.evaluate import evaluate_run
from lewm.report.summary import DECODER_FIGURES, DECODER_GIFS, build_report

runner = CliRunner()


@pytest.fixture(scope="module")
def episode(decoded_run):
    """The small run, its decoder, and episode 0's frames and raw actions (every step)."""
    run, _ = decoded_run
    ckpt, decoder = load_checkpoint(run), load_decoder(run)
    with open_store(ckpt.config.data.path, cache="none") as store:
        rows = np.arange(int(store.ep_offset[0]), int(store.ep_offset[0] + store.ep_len[0]))
        frames = list(store.read("pixels", rows))
        actions = store.read("action", rows[:-1])
    return ckpt, decoder, frames, actions


def test_imagined_frames_hold_each_model_step_for_frameskip_frames(episode):
    ckpt, decoder, frames, actions = episode
    skip = ckpt.config.model.frameskip
    steps = 3 * skip + 2  # three whole blocks, then two steps of a fourth
    out = imagined_frames(ckpt, decoder, frames[: steps + 1], actions[:steps])
    assert len(out) == steps + 1 and out[0].shape == frames[0].shape and out[0].dtype == np.uint8

    with torch.inference_mode():
        first = reconstruct(decoder, ckpt.model.encode(pixels_tensor(np.stack(frames[:1]))))[0]
    blocks = ckpt.normalizer.transform("action", actions[: 3 * skip]).reshape(3, -1)
    rollout = imagine(ckpt, decoder, np.stack(frames[: 3 * skip + 1 : skip]), blocks)
    expected = [first, *rollout]
    for t, picture in enumerate(out):
        assert np.array_equal(picture, expected[min(t // skip, 3)]), t


def test_fewer_actions_than_a_block_imagine_only_the_first_frame(episode):
    ckpt, decoder, frames, actions = episode
    out = imagined_frames(ckpt, decoder, frames[:3], actions[:2])
    assert all(np.array_equal(o, out[0]) for o in out)


def test_evaluation_draws_real_imagined_goal(decoded_run, tworoom_file, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(decoded_run[0], run)
    cfg = EvalConfig(episodes=2, budget=7, gifs=1, batch=2, split="all",
                     exclude_solved_starts=False)  # fmt: skip
    media = ImaginedMedia(run, torch.device("cpu"), "gif")
    result, path = evaluate_run(run, tworoom_file, cfg, solver="random", device="cpu",
                                name="im", progress=False, media=media)  # fmt: skip
    assert json.loads(path.read_text())["settings"]["media"] == "real | imagined | goal"
    (gif,) = path.parent.glob("episode_000_*.gif")
    with Image.open(gif) as image:
        # Three 64-px panels and two 2-px gaps, enlarged 4x; one frame per step and the start.
        assert image.size == (4 * (3 * 64 + 2 * 2), 4 * 64)
        assert image.n_frames == result.episodes[0].steps + 1

    build_report(run)
    assert "real | imagined | goal: im episode_000" in (run / "report.md").read_text()


def test_imagined_media_needs_a_decoder(small_run):
    with pytest.raises(ValueError, match=r"no decoder here; train one with `lewm decoder"):
        ImaginedMedia(small_run, torch.device("cpu"))


def test_episode_videos_end_on_the_episode_last_frame(episode, tmp_path):
    ckpt, decoder, frames, _ = episode
    with open_store(ckpt.config.data.path, cache="none") as store:
        (path,) = write_episode_videos(ckpt, decoder, store, [0], tmp_path, max_steps=6)
    with Image.open(path) as image:
        assert image.n_frames == 7
        image.seek(6)
        last = np.asarray(image.convert("RGB"))[::4, ::4]  # undo the 4x enlargement
    # The goal panel is the last frame drawn, at the right; GIF palettes quantise colours.
    right = last[:, -64:].astype(int)
    assert np.abs(right - frames[6].astype(int)).mean() < 8


def test_rollout_error_cli_writes_videos_and_the_report_shows_them(decoded_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(decoded_run[0], run)
    result = runner.invoke(app, ["rollout-error", str(run), "--horizon", "1", "--device",
                                 "cpu", "--video", "gif", "--videos", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "analysis" / "rollout_error.json").read_text())
    (video,) = saved["videos"]
    assert Path(video).parent == run / "analysis" / "rollouts" and Path(video).is_file()
    build_report(run)
    page = (run / "report.md").read_text()
    assert "real | imagined | goal: rollouts episode_" in page
    assert "## Pixel decoder" in page and "mean training frame" in page


def test_rollout_error_cli_refuses_an_unknown_video_format(small_run):
    result = runner.invoke(app, ["rollout-error", str(small_run), "--video", "avi"])
    assert result.exit_code == 2 and "--video 'avi': expected gif, mp4 or none" in result.output


def test_report_names_match_what_the_decoder_writes():
    from lewm.analysis.decoder import FIGURES, GIF_FOLDER

    assert (DECODER_FIGURES, DECODER_GIFS) == (FIGURES, GIF_FOLDER)
