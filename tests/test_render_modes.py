"""`--render fast|faithful`: the fast MuJoCo render keeps the scene's geometry and drops its
lighting effects; the mode travels from the data file to the run and to evaluation."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from conftest import SMALL_MODEL
from typer.testing import CliRunner

from lewm.cli import app
from lewm.config import resolve
from lewm.envs import get_env_spec, make_env
from lewm.train.fit import train

runner = CliRunner()


def _arm(frame: np.ndarray) -> np.ndarray:
    """Reacher's arm: brown (0.7, 0.5, 0.3) over a blue floor, whatever the lighting."""
    f = frame.astype(int)
    return f[..., 0] > f[..., 2] + 30


def _cube(frame: np.ndarray) -> np.ndarray:
    """Cube's red cube, the only saturated red in the scene."""
    f = frame.astype(int)
    return (f[..., 0] > 60) & (f[..., 0] > 2 * f[..., 1]) & (f[..., 0] > 2 * f[..., 2])


@pytest.mark.parametrize(("name", "mask"), [("reacher", _arm), ("cube", _cube)])
def test_fast_render_keeps_the_geometry_and_drops_lighting_effects(name, mask):
    spec = get_env_spec(name)
    envs = {mode: spec.make(128, render=mode) for mode in ("faithful", "fast")}
    try:
        for seed in range(3):
            frames = {}
            for mode, env in envs.items():
                env.reset(seed=seed)
                frames[mode] = env.render()
            faithful, fast = frames["faithful"], frames["fast"]
            assert np.abs(faithful.astype(int) - fast).mean() > 5  # the lighting differs
            a, b = mask(faithful), mask(fast)
            assert a.sum() > 30 and 0.75 < b.sum() / a.sum() < 1.33
            # The same object in the same place (measured: centroids 0.06-0.32 px apart).
            centre = [np.array(np.nonzero(m)).mean(axis=1) for m in (a, b)]
            assert np.abs(centre[0] - centre[1]).max() < 1.0
            again = envs["fast"].render()
            assert np.array_equal(again, fast)
    finally:
        for env in envs.values():
            env.close()


def test_2d_scenes_draw_alike_in_both_modes_and_bad_modes_are_refused():
    frames = []
    for mode in ("faithful", "fast"):
        env = make_env("tworoom", 32, render=mode)
        env.reset(seed=4)
        frames.append(env.render())
    assert np.array_equal(*frames)
    for name in ("tworoom", "pusht", "reacher"):
        with pytest.raises(ValueError, match="render mode 'nice': expected one of faithful, fast"):
            make_env(name, 32, render="nice")


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, tworoom_file):
    """A run trained on a copy of the TwoRoom data marked as drawn the fast way."""
    folder = tmp_path_factory.mktemp("fast")
    data = folder / "fast.h5"
    shutil.copy(tworoom_file, data)
    with h5py.File(data, "a") as f:
        f.attrs["render"] = "fast"
    run = folder / "run"
    train(data, run, resolve("tiny", SMALL_MODEL, {"train.max_steps": 1}), device="cpu",
          progress=False)
    return run, data


def test_collect_records_the_mode_and_training_reads_it(tmp_path, fast_run):
    out = tmp_path / "d.h5"
    result = runner.invoke(app, ["collect", "tworoom", "--episodes", "2", "--out", str(out),
                                 "--render", "fast"])
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        assert f.attrs["render"] == "fast"
    run, _ = fast_run
    assert json.loads((run / "config.json").read_text())["data"]["render"] == "fast"
    bad = runner.invoke(app, ["collect", "tworoom", "--episodes", "2", "--out",
                              str(tmp_path / "e.h5"), "--render", "nice"])
    assert bad.exit_code == 2 and "render mode 'nice'" in bad.output
    assert not (tmp_path / "e.h5").exists()


def test_evaluation_renders_as_the_training_data_unless_told(fast_run):
    run, data = fast_run
    base = ["eval", str(run), "--data", str(data), "--solver", "random", "--episodes", "2",
            "--split", "all", "--device", "cpu", "--no-progress"]
    same = runner.invoke(app, [*base, "--name", "same"])
    assert same.exit_code == 0, same.output
    assert "warning" not in same.output
    saved = json.loads((run / "eval" / "same" / "result.json").read_text())["settings"]
    assert saved["render"] == "fast"
    other = runner.invoke(app, [*base, "--name", "other", "--render", "faithful"])
    assert other.exit_code == 0, other.output
    assert "renders 'faithful' but the training data was rendered 'fast'" in other.output
    saved = json.loads((run / "eval" / "other" / "result.json").read_text())["settings"]
    assert saved["render"] == "faithful"
