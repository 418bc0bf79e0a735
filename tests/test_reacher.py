"""Reacher dynamics, qpos_match success, state round trip, rendering and policies
(ENVIRONMENTS.md §3)."""

from __future__ import annotations

import numpy as np
import pytest

from lewm.envs import ReacherEnv, ReacherOUPolicy, ReacherRandomPolicy, get_env_spec
from lewm.envs.reacher import is_success

GOAL = np.array([0.5, -0.3, 0.0, 0.0])


@pytest.fixture(scope="module")
def env():
    env = ReacherEnv(32)
    yield env
    env.close()


def placed(env: ReacherEnv, qpos=(0.0, 0.0), qvel=(0.0, 0.0), goal=GOAL) -> ReacherEnv:
    env.reset(seed=0, options={"state": np.r_[qpos, qvel], "goal_state": goal})
    return env


@pytest.mark.parametrize(("action", "joint"), [((1.0, 0.0), 0), ((0.0, 1.0), 1), ((0.0, -1.0), 1)])
def test_joint_torques_move_their_joint(env, action, joint) -> None:
    placed(env)
    for _ in range(5):
        env.step(action)
    qpos, qvel = env.get_state()[:2], env.get_state()[2:]
    sign = np.sign(sum(action))
    assert sign * qpos[joint] > 0.01 and sign * qvel[joint] > 0.1
    # The other joint only reacts to the coupling, far less than the driven one.
    assert abs(qpos[1 - joint]) < abs(qpos[joint])


def test_zero_torque_keeps_the_arm_at_rest(env) -> None:
    placed(env, qpos=(1.0, 0.5))
    for _ in range(10):
        env.step((0.0, 0.0))
    np.testing.assert_allclose(env.get_state(), [1.0, 0.5, 0.0, 0.0], atol=1e-9)


def test_one_step_is_two_physics_steps_of_0_02(env) -> None:
    placed(env)
    t0 = env.physics.data.time
    env.step((0.0, 0.0))
    assert env.physics.data.time - t0 == pytest.approx(0.04)


@pytest.mark.parametrize(("offset", "expected"), [(0.049, True), (0.051, False)])
def test_success_at_the_joint_threshold(env, offset, expected) -> None:
    for joint in (0, 1):
        qpos = GOAL[:2].copy()
        qpos[joint] += offset
        assert is_success(qpos, GOAL[:2]) is expected
        placed(env, qpos=qpos)
        _, _, terminated, _, info = env.step((0.0, 0.0))
        assert info["success"] is expected and terminated is expected


def test_success_has_no_angle_wrapping() -> None:
    assert not is_success([2.0 * np.pi, 0.0], [0.0, 0.0])


def test_passing_through_the_goal_between_frames_counts(env) -> None:
    # Shoulder at -0.1 turning at 5 rad/s: inside the tolerance after the first 0.02 s
    # sub-step (-0.017), outside again after the second (+0.056).
    placed(env, qpos=(-0.1, 0.0), qvel=(5.0, 0.0), goal=np.zeros(4))
    _, _, terminated, _, info = env.step((0.0, 0.0))
    assert abs(env.get_state()[0]) > 0.05
    assert info["success"] and terminated


def test_set_state_round_trip_and_bad_state(env) -> None:
    state = np.array([2.5, -1.2, 0.3, -0.7])
    env.set_state(state)
    np.testing.assert_array_equal(env.get_state(), state)
    np.testing.assert_allclose(env.step((0.0, 0.0))[4]["qpos"], env.get_state()[:2])
    with pytest.raises(ValueError, match="4 finite numbers"):
        env.set_state([1.0, 2.0])


def test_state_of_info_restores_the_state(env) -> None:
    spec = get_env_spec("reacher")
    placed(env, qpos=(0.4, 0.2), qvel=(1.0, -1.0))
    _, _, _, _, info = env.step((0.3, -0.2))
    state = spec.state_of(info)
    env.reset(seed=5, options={"state": state})
    np.testing.assert_array_equal(env.get_state(), state)


def test_same_seed_same_first_frames() -> None:
    a, b = ReacherEnv(32), ReacherEnv(32)
    frames = []
    for env, seed in ((a, 3), (b, 3)):
        env.reset(seed=seed)
        policy = ReacherRandomPolicy(env, np.random.default_rng(seed))
        frames.append([env.render()] + [env.step(policy())[0] for _ in range(3)])
    np.testing.assert_array_equal(frames[0][0], frames[1][0])
    np.testing.assert_array_equal(np.stack(frames[0][1:]), np.stack(frames[1][1:]))
    b.reset(seed=4)
    assert not np.array_equal(frames[0][0], b.render())
    a.close()
    b.close()


def test_goal_image_is_a_render_of_the_goal_state(env) -> None:
    placed(env, qpos=(0.0, 0.0), goal=np.array([2.0, 1.0, 0.0, 0.0]))
    goal_image, current = env.render_goal(), env.render()
    assert not np.array_equal(goal_image, current)
    np.testing.assert_array_equal(env.get_state(), [0.0, 0.0, 0.0, 0.0])
    env.set_state([2.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(goal_image, env.render())


def test_the_target_sphere_is_hidden(env) -> None:
    # Same arm, different random dm_control targets: identical images.
    frames, targets = [], []
    for seed in (0, 1):
        _, info = env.reset(seed=seed, options={"state": [0.3, 0.2, 0.0, 0.0]})
        frames.append(env.render())
        targets.append(info["target_pos"])
    assert not np.allclose(targets[0], targets[1])
    np.testing.assert_array_equal(frames[0], frames[1])


def test_observation_layout(env) -> None:
    obs, info = env.reset(seed=0, options={"state": [0.7, -0.4, 0.0, 0.0]})
    assert obs.shape == (6,) and obs.dtype == np.float32
    np.testing.assert_allclose(obs[:2], [0.7, -0.4], atol=1e-6)
    np.testing.assert_allclose(obs[2:4], info["target_pos"] - info["finger_pos"], atol=1e-6)
    # Finger 0.24 m from the shoulder when the wrist is straight.
    env.set_state([0.0, 0.0, 0.0, 0.0])
    assert np.linalg.norm(env.step((0.0, 0.0))[4]["finger_pos"]) == pytest.approx(0.24, abs=1e-3)


def _lag1(actions: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(actions[:-1, j], actions[1:, j])[0, 1] for j in (0, 1)]))


def test_random_policy_is_uniform_and_uncorrelated(env) -> None:
    policy = ReacherRandomPolicy(env, np.random.default_rng(0))
    actions = np.stack([policy() for _ in range(4000)])
    assert actions.min() >= -1.0 and actions.max() <= 1.0
    np.testing.assert_allclose(actions.std(axis=0), 1.0 / np.sqrt(3.0), atol=0.02)
    assert abs(_lag1(actions)) < 0.05


def test_ou_policy_is_smooth_and_explores_further(env) -> None:
    policy = ReacherOUPolicy(env, np.random.default_rng(0))
    actions = np.stack([policy() for _ in range(4000)])
    assert actions.min() >= -1.0 and actions.max() <= 1.0
    assert _lag1(actions) > 0.8
    spread = {}
    for name, cls in (("random", ReacherRandomPolicy), ("ou", ReacherOUPolicy)):
        reach = []
        for seed in range(4):
            placed(env)
            policy = cls(env, np.random.default_rng(seed))
            for _ in range(100):
                env.step(policy())
            reach.append(np.abs(env.get_state()[:2]).max())
        spread[name] = np.mean(reach)
    assert spread["ou"] > 2.0 * spread["random"]


def test_registry_entry() -> None:
    spec = get_env_spec("reacher")
    assert (spec.max_steps, spec.frameskip, spec.action_dim) == (200, 5, 2)
    assert spec.state_keys == ("qpos", "qvel") and spec.default_policy == "random"
    assert not spec.episode_ends_at_success
    with pytest.raises(ValueError, match="no policy 'expert'.*random, ou"):
        spec.make_policy(None, np.random.default_rng(0), "expert")
