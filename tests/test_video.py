"""MP4 episodes: written through PyAV, read back frame for frame, shown by the report."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from lewm.cli import app
from lewm.report.summary import build_report
from lewm.report.video import read_mp4, save_mp4

runner = CliRunner()


def test_mp4_decodes_back_to_the_frames_shape_count_and_content(tmp_path):
    # A gradient with a moving square: smooth enough for H.264 at crf 18 to keep close.
    frames = []
    for t in range(9):
        f = np.tile(np.linspace(0, 255, 33, dtype=np.uint8)[None, :, None], (31, 1, 3))
        f[5:15, 2 + t : 12 + t] = (255, 0, 0)
        frames.append(f)
    path = save_mp4(frames, tmp_path / "e.mp4", scale=2)
    video = read_mp4(path)
    # Odd sides are padded to even ones (yuv420p needs them); nothing else is added.
    assert video.shape == (9, 62, 66, 3) and video.dtype == np.uint8
    enlarged = np.stack([np.repeat(np.repeat(f, 2, 0), 2, 1) for f in frames])
    assert np.abs(video[:, :62, :66].astype(int) - enlarged).mean() < 4.0


def test_missing_pyav_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ValueError, match=r"pip install 'lewm\[video\]'"):
        save_mp4([np.zeros((8, 8, 3), np.uint8)], tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def test_eval_writes_mp4_episodes_that_the_report_plays(tmp_path, small_run, tworoom_file):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    result = runner.invoke(app, ["eval", str(run), "--data", str(tworoom_file), "--solver",
                                 "random", "--episodes", "2", "--split", "all", "--device",
                                 "cpu", "--no-progress", "--video", "mp4", "eval.gifs=2"])
    assert result.exit_code == 0, result.output
    videos = sorted((run / "eval" / "random_seed42").glob("*.mp4"))
    assert len(videos) == 2 and not list((run / "eval" / "random_seed42").glob("*.gif"))
    frames = read_mp4(videos[0])
    assert frames.shape[1:] == (256, (2 * 64 + 2) * 4, 3)
    page = build_report(run)["html"].read_text()
    assert f'<video src="eval/random_seed42/{videos[0].name}"' in page
    bad = runner.invoke(app, ["eval", str(run), "--data", str(tworoom_file), "--video", "avi"])
    assert bad.exit_code == 2 and "--video 'avi'" in bad.output
