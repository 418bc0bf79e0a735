"""``lewm.load_policy``: a trained run acting in a plain gymnasium loop, one action per call,
with the planner's own plans, replanning when a chunk is used up."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from conftest import SMALL_DINOWM

import lewm
import lewm.envs  # noqa: F401  (registers the gymnasium ids)
from lewm.checkpoint import load_checkpoint
from lewm.config import ConfigError, apply_overrides, resolve
from lewm.plan.mpc import MPCPlanner
from lewm.policy import Policy
from lewm.train.fit import train

# Planning in a few milliseconds; a chunk of 2 blocks x frameskip 5 = 10 actions.
FAST_PLAN = ["plan.samples=16", "plan.elites=4", "plan.iterations=2", "plan.receding_horizon=2"]
CHUNK = 10


def _episode(seed: int = 0) -> tuple[gymnasium.Env, np.ndarray, np.ndarray]:
    env = gymnasium.make("lewm/TwoRoom-v0", resolution=64)
    env.reset(seed=seed)
    return env, env.render(), env.unwrapped.render_goal()


def _planner(run: Path, overrides: list[str]) -> MPCPlanner:
    """The planner ``load_policy`` should build, built by hand."""
    ckpt = load_checkpoint(run, "cpu")
    cfg = apply_overrides(ckpt.config, overrides)
    return MPCPlanner(
        ckpt.model, ckpt.normalizer, cfg.plan, cfg.model.frameskip, cfg.model.action_dim,
        torch.device("cpu"),
    )  # fmt: skip


def _plans_made(policy: Policy) -> int:
    return len(policy.planner.call_sizes)


def test_policy_drives_a_gymnasium_loop_and_replans_when_the_chunk_is_used_up(small_run):
    policy = lewm.load_policy(small_run, device="cpu", seed=0, overrides=FAST_PLAN)
    env, frame, goal = _episode()
    steps = 0
    for _ in range(36):
        action = policy(frame, goal)
        assert action.dtype == np.float32
        assert action.shape == env.action_space.shape
        _, _, terminated, truncated, _ = env.step(action)
        steps += 1
        assert _plans_made(policy) == math.ceil(steps / CHUNK)
        if terminated or truncated:
            break
        frame = env.render()
    assert steps > CHUNK  # at least one replan happened
    env.close()


def test_the_actions_are_the_planners_plans_warm_start_included(small_run):
    overrides = [*FAST_PLAN, "plan.warm_start=true"]
    env, frame, goal = _episode()
    planner = _planner(small_run, overrides)
    generator = torch.Generator().manual_seed(3)
    first, plans = planner.plan(frame[None], goal[None], [generator])
    env.step(first[0, 0])
    later = env.render()
    second, _ = planner.plan(later[None], goal[None], [generator], previous=plans)

    policy = lewm.load_policy(small_run, device="cpu", seed=3, overrides=overrides)
    got = [policy(frame, goal)]
    got += [policy(later, goal) for _ in range(CHUNK - 1)]  # the queue ignores new frames
    assert _plans_made(policy) == 1
    np.testing.assert_array_equal(np.stack(got), first[0])
    np.testing.assert_array_equal(policy(later, goal), second[0, 0])
    assert _plans_made(policy) == 2
    env.close()


def test_same_seed_same_actions_and_reset_replans(small_run):
    _, frame, goal = _episode()
    a = lewm.load_policy(small_run, device="cpu", seed=5, overrides=FAST_PLAN)
    b = lewm.load_policy(small_run, device="cpu", seed=5, overrides=FAST_PLAN)
    c = lewm.load_policy(small_run, device="cpu", seed=6, overrides=FAST_PLAN)
    first = [a(frame, goal) for _ in range(3)]
    np.testing.assert_array_equal(first, [b(frame, goal) for _ in range(3)])
    assert not np.array_equal(first, [c(frame, goal) for _ in range(3)])

    a.reset(seed=5)
    assert _plans_made(a) == 1
    np.testing.assert_array_equal(a(frame, goal), first[0])  # a new plan, from the same seed
    assert _plans_made(a) == 2
    a.reset()
    assert not np.array_equal(a(frame, goal), first[0])  # the noise goes on
    assert _plans_made(a) == 3


def test_frames_of_another_size_or_type_are_refused(small_run):
    policy = lewm.load_policy(small_run, device="cpu", overrides=FAST_PLAN)
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"observation frame: expected uint8 \(64, 64, 3\).*32"):
        policy(np.zeros((32, 32, 3), dtype=np.uint8), frame)
    with pytest.raises(ValueError, match=r"goal frame: expected uint8 \(64, 64, 3\)"):
        policy(frame, frame.astype(np.float32))
    assert _plans_made(policy) == 0


def test_overrides_reach_the_plan_section_only(small_run):
    policy = lewm.load_policy(small_run, device="cpu", overrides=["samples=20", "plan.elites=5"])
    assert (policy.planner.cfg.samples, policy.planner.cfg.elites) == (20, 5)
    with pytest.raises(ValueError, match="plan settings only"):
        lewm.load_policy(small_run, device="cpu", overrides=["model.enc_dim=8"])
    with pytest.raises(ConfigError, match="plan.elites"):
        lewm.load_policy(small_run, device="cpu", overrides=["plan.elites=1"])


@pytest.fixture(scope="module")
def proprio_run(tmp_path_factory, tworoom_file) -> Path:
    run = tmp_path_factory.mktemp("policy_proprio") / "run"
    train(tworoom_file, run, resolve("tiny", SMALL_DINOWM, {"train.max_steps": 2}),
          device="cpu", progress=False)
    return run


def test_a_model_that_reads_proprioception_needs_the_raw_vectors(proprio_run):
    policy = lewm.load_policy(proprio_run, device="cpu", overrides=FAST_PLAN)
    env, frame, goal = _episode()
    _, info = env.reset(seed=0)
    with pytest.raises(ValueError, match="reads proprioception"):
        policy(frame, goal)
    with pytest.raises(ValueError, match=r"proprio \(goal\): expected 2 values"):
        policy(frame, goal, proprio=(info["proprio"], np.zeros(3)))
    pair = (info["proprio"], env.unwrapped.get_goal_state())
    assert policy(frame, goal, proprio=pair).shape == (2,)
    env.close()


def test_import_lewm_stays_light():
    script = (
        "import sys, lewm\n"
        "assert 'torch' not in sys.modules\n"
        "assert callable(lewm.load_policy) and 'torch' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
