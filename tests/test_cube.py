"""OGBench-Cube wrapper: actions, success radius, state round trip, seeding, goal image
(ENVIRONMENTS.md §4). Each render costs ~0.15 s on a CPU, so the tests share one environment."""

from __future__ import annotations

import numpy as np
import pytest

from lewm.envs import CubeEnv, CubeExplorePolicy, CubeOraclePolicy, get_env_spec


@pytest.fixture(scope="module")
def env():
    env = CubeEnv(32)
    yield env
    env.close()


def cube_slice(env: CubeEnv) -> slice:
    return env._cube_qpos


# Down, not up, for z: the start height is near the workspace's 0.35 m ceiling.
@pytest.mark.parametrize(("axis", "sign"), [(0, 1.0), (1, 1.0), (1, -1.0), (2, -1.0)])
def test_an_action_moves_the_effector_along_its_axis(env, axis, sign) -> None:
    _, info = env.reset(seed=0)
    start = info["proprio_effector_pos"].copy()
    action = np.zeros(5)
    action[axis] = sign
    for _ in range(5):
        _, _, _, _, info = env.step(action)
    moved = (info["proprio_effector_pos"] - start) * sign
    assert moved[axis] > 0.05  # up to 0.05 m per step, minus tracking lag
    assert np.abs(np.delete(moved, axis)).max() < 0.5 * moved[axis]


@pytest.mark.parametrize(("distance", "expected"), [(0.039, True), (0.041, False)])
def test_success_at_the_4cm_radius(env, distance, expected) -> None:
    env.reset(seed=1)
    goal = env.get_state()
    cubes = cube_slice(env)
    start = goal.copy()
    direction = np.array([0.6, -0.8, 0.0])
    start[cubes.start : cubes.start + 3] += distance * direction
    env.reset(seed=1, options={"state": start, "goal_state": goal})
    assert env.is_success() is expected
    # The orientation is not scored: a turned cube on the target still succeeds.
    turned = goal.copy()
    turned[cubes.start + 3 : cubes.stop] = [np.cos(0.5), 0.0, 0.0, np.sin(0.5)]
    env.set_state(turned)
    assert env.is_success()


def test_set_state_round_trip_and_bad_state(env) -> None:
    env.reset(seed=2)
    for _ in range(3):
        env.step(np.array([0.3, -0.2, 0.1, 0.5, 1.0]))
    state = env.get_state()
    env.reset(seed=7)
    env.set_state(state)
    np.testing.assert_array_equal(env.get_state(), state)
    assert get_env_spec("cube").state_of(env._info(env.last_info)).shape == state.shape
    with pytest.raises(ValueError, match="41 finite numbers"):
        env.set_state(np.zeros(4))


def test_goal_state_sets_the_target_to_its_cube_pose(env) -> None:
    env.reset(seed=3)
    goal = env.get_state()
    goal[cube_slice(env).start : cube_slice(env).start + 2] = [0.5, 0.2]
    env.set_goal_state(goal)
    np.testing.assert_allclose(env.inner.data.mocap_pos[env._target_mocap][:2], [0.5, 0.2])
    np.testing.assert_array_equal(env.get_goal_state(), goal)


def test_same_seed_same_scene_and_episode() -> None:
    """The reference's pitfall: CubeEnv.reset ignored the seed and the oracle drew from the
    global NumPy generator."""
    runs = []
    for _ in range(2):
        env = CubeEnv(16)
        np.random.seed(np.random.randint(1000))  # the global generator must not matter
        env.reset(seed=11)
        policy = CubeOraclePolicy(env, np.random.default_rng(11))
        states = [env.get_state()]
        for _ in range(8):
            env.step(policy())
            states.append(env.get_state())
        runs.append((np.stack(states), env.render(), policy.oracle._final_pos.copy()))
        env.close()
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][2], runs[1][2])


def test_different_seeds_give_different_scenes(env) -> None:
    starts = []
    for seed in (0, 1):
        env.reset(seed=seed)
        starts.append(env.get_state()[cube_slice(env)])
    assert not np.allclose(starts[0], starts[1])


def test_goal_image_is_a_render_of_the_goal_state(env) -> None:
    env.reset(seed=4)
    start = env.get_state()
    goal = start.copy()
    goal[cube_slice(env).start : cube_slice(env).start + 2] = [0.35, -0.2]
    env.set_goal_state(goal)
    image = env.render_goal()
    np.testing.assert_array_equal(env.get_state(), start)
    assert not np.array_equal(image, env.render())
    env.set_state(goal)
    np.testing.assert_array_equal(image, env.render())


def test_oracle_policy_noise_and_progress(env) -> None:
    env.reset(seed=5)
    policy = CubeOraclePolicy(env, np.random.default_rng(5))
    xi = policy.noise[0]
    assert 0.0 <= xi <= 0.1
    np.testing.assert_allclose(policy.noise, xi * np.array([1, 1, 1, 3, 10]))
    start = env.last_info["proprio/effector_pos"].copy()
    cube = env.last_info["privileged/block_0_pos"].copy()
    for _ in range(15):
        action = policy()
        assert action.shape == (5,) and np.all(np.abs(action) <= 1.0)
        env.step(action)
    # The oracle's first phase brings the gripper toward the point above the cube.
    end = env.last_info["proprio/effector_pos"]
    assert np.linalg.norm(end[:2] - cube[:2]) < np.linalg.norm(start[:2] - cube[:2])


def test_explore_policy_mixes_random_bursts_into_a_working_oracle(env, monkeypatch) -> None:
    """About 30% of the steps are random, in bursts of 5 to 20 steps, and the oracle still
    carries the cube (more than 20 cm over the episode) between them."""
    env.reset(seed=0)
    policy = CubeExplorePolicy(env, np.random.default_rng(0))
    oracle_calls: list[int] = []
    oracle = CubeOraclePolicy.__call__
    monkeypatch.setattr(
        CubeOraclePolicy, "__call__", lambda self: [oracle_calls.append(1), oracle(self)][1]
    )
    from_oracle: list[bool] = []
    cube = env.last_info["privileged/block_0_pos"].copy()
    moved = 0.0
    for _ in range(200):
        before = len(oracle_calls)
        action = policy()
        from_oracle.append(len(oracle_calls) > before)
        assert action.shape == (5,) and np.all(np.abs(action) <= 1.0)
        env.step(action)
        moved = max(moved, np.linalg.norm(env.last_info["privileged/block_0_pos"] - cube))
    random_steps = ~np.array(from_oracle)
    assert 0.15 < random_steps.mean() < 0.45
    edges = np.flatnonzero(np.diff(np.r_[0, random_steps.astype(int), 0]))
    bursts = edges[1::2] - edges[::2]
    assert len(bursts) >= 3 and bursts[:-1].min() >= 5 and bursts.max() <= 20
    assert moved > 0.2


def test_registry_entry() -> None:
    spec = get_env_spec("cube")
    assert (spec.max_steps, spec.frameskip, spec.action_dim) == (200, 5, 5)
    assert spec.state_keys == ("qpos", "qvel") and spec.default_policy == "oracle"
    assert list(spec.policies) == ["oracle", "explore"]
    assert not spec.episode_ends_at_success
