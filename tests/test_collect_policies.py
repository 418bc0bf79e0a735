"""Collection with a chosen data policy, replaying a dataset, and the MuJoCo environments'
fixed-length episodes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from typer.testing import CliRunner

import lewm.envs
from lewm.cli import app
from lewm.data import EpisodeStore, collect
from lewm.envs import get_env_spec


@pytest.fixture
def short_episodes(monkeypatch):
    """MuJoCo episodes of a few steps: a full 200-step Cube episode takes half a minute."""

    def shorten(name: str, steps: int) -> None:
        spec = dataclasses.replace(get_env_spec(name), max_steps=steps)
        monkeypatch.setitem(lewm.envs._SPECS, name, spec)

    return shorten


def test_reacher_episodes_run_their_full_length_with_the_chosen_policy(tmp_path, short_episodes):
    short_episodes("reacher", 12)
    paths = {p: collect("reacher", 2, tmp_path / f"{p}.h5", resolution=16, seed=0,
                        progress=False, policy=p) for p in ("random", "ou")}
    lag1 = {}
    for name, path in paths.items():
        with EpisodeStore(path) as store:
            assert store.attrs["policy"] == name
            assert store.ep_len.tolist() == [13, 13]
            assert store.read("qpos", slice(None)).shape == (26, 2)
            actions = store.read("action", store.episode_rows(0))[:-1]
            lag1[name] = np.corrcoef(actions[:-1, 0], actions[1:, 0])[0, 1]
    assert lag1["ou"] > lag1["random"]


def test_cube_episode_keeps_going_after_success(tmp_path, short_episodes):
    short_episodes("cube", 6)
    path = collect("cube", 1, tmp_path / "cube.h5", resolution=16, seed=0, progress=False)
    with EpisodeStore(path) as store:
        assert store.ep_len.tolist() == [7] and store.action_dim == 5
        assert store.read("qpos", slice(None)).shape == (7, 21)
        assert store.read("privileged_block_0_pos", slice(None)).shape == (7, 3)


def test_an_unknown_policy_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match="no policy 'expert'.*random, ou, or replay:FILE"):
        collect("reacher", 1, tmp_path / "r.h5", resolution=16, progress=False,
                policy="expert")
    assert not list(tmp_path.iterdir())


def test_replay_re_records_a_dataset_at_another_resolution(tmp_path):
    source = collect("tworoom", 3, tmp_path / "source.h5", resolution=16, seed=4, progress=False)
    copy = collect("tworoom", 3, tmp_path / "copy.h5", resolution=24, seed=9, progress=False,
                   policy=f"replay:{source}")
    with EpisodeStore(source) as a, EpisodeStore(copy) as b:
        np.testing.assert_array_equal(a.ep_len, b.ep_len)
        np.testing.assert_array_equal(a.read("action", slice(None)), b.read("action", slice(None)))
        # Same start, same actions, deterministic dynamics: the same states throughout.
        np.testing.assert_allclose(a.read("proprio", slice(None)), b.read("proprio", slice(None)),
                                   atol=1e-4)
        assert b.image_size == 24 and b.attrs["policy"] == f"replay:{source}"


def test_replay_errors(tmp_path):
    source = collect("tworoom", 2, tmp_path / "tworoom.h5", resolution=16, progress=False)
    with pytest.raises(ValueError, match="has 2 episodes; cannot replay 3"):
        collect("tworoom", 3, tmp_path / "a.h5", resolution=16, progress=False,
                policy=f"replay:{source}")
    with pytest.raises(ValueError, match="needs column\\(s\\) qpos, qvel"):
        collect("reacher", 1, tmp_path / "b.h5", resolution=16, progress=False,
                policy=f"replay:{source}")
    with pytest.raises(ValueError, match="expected replay:FILE"):
        collect("tworoom", 1, tmp_path / "c.h5", resolution=16, progress=False, policy="replay:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tworoom.h5"]


def test_cli_policy_option(tmp_path):
    result = CliRunner().invoke(app, ["collect", "pusht", "--episodes", "1", "--resolution", "16",
                                      "--out", str(tmp_path / "p.h5"), "--policy", "random"])
    assert result.exit_code == 2
    assert "no policy 'random'" in result.output and "weak" in result.output


@pytest.mark.slow
@pytest.mark.parametrize(("env", "episodes", "steps"), [("reacher", 6, 40), ("cube", 2, 30)])
def test_mujoco_env_collect_train_evaluate(tmp_path, short_episodes, env, episodes, steps):
    """The whole protocol on a MuJoCo environment: states restored from qpos + qvel columns,
    success counted by the environment, GIFs written."""
    from conftest import SMALL_MODEL

    from lewm.config import EvalConfig, resolve
    from lewm.plan.evaluate import evaluate_run
    from lewm.report.gif import write_episode_gif
    from lewm.train.fit import train

    short_episodes(env, steps)
    data = collect(env, episodes, tmp_path / "data.h5", resolution=64, seed=0, progress=False)
    cfg = resolve("tiny", SMALL_MODEL, {"train.max_steps": 2, "train.batch_size": 4,
                                        "data.val_fraction": 0.5})
    train(data, tmp_path / "run", cfg, device="cpu", progress=False)
    eval_cfg = EvalConfig(episodes=2, budget=5, gifs=1, batch=2)
    result, path = evaluate_run(tmp_path / "run", eval_cfg=eval_cfg, solver="random",
                                progress=False, media=write_episode_gif)
    assert len(result.episodes) == 2 and 0.0 <= result.success_rate <= 1.0
    assert all(o.steps <= 5 for o in result.episodes)
    assert list(path.parent.glob("episode_000_*.gif"))
