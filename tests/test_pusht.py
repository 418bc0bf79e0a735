"""PushT dynamics, success test, state round trip, rendering and collection (ENVIRONMENTS.md §1)."""

from __future__ import annotations

import numpy as np
import pytest

from lewm.data import EpisodeStore, collect
from lewm.envs import PushTEnv, PushTWeakPolicy, get_env_spec
from lewm.envs.pusht import fold_angle, is_success

# Agent and block far apart, so no contact disturbs the pose being tested.
APART = (100.0, 100.0, 300.0, 300.0, 1.0, 0.0, 0.0)
GOAL = (400.0, 420.0, 250.0, 200.0, 2.5, 0.0, 0.0)


def placed(state=APART, goal=GOAL, resolution: int = 64) -> PushTEnv:
    env = PushTEnv(resolution)
    env.reset(seed=0, options={"state": state, "goal_state": goal})
    return env


def pd_displacement(target: float, steps: int) -> float:
    """The reference's PD law integrated by hand: where the agent ends after ``steps``."""
    p = v = 0.0
    for _ in range(steps):
        v += (100.0 * (target - p) - 20.0 * v) * 0.01
        p += v * 0.01
    return p


def test_small_action_moves_the_agent_toward_plus_ten_units() -> None:
    env = placed()
    start = env.get_state()
    state, *_ = env.step(np.array([0.1, 0.0], dtype=np.float32))
    moved = state - start
    np.testing.assert_allclose(moved[0], pd_displacement(10.0, 10), atol=1e-3)
    assert 0.0 < moved[0] < 10.0 and moved[1] == 0.0
    np.testing.assert_array_equal(moved[2:5], 0.0)  # the block was not touched
    # Re-aiming at the same point each step settles the agent there: the target is +10.
    for _ in range(30):
        env.step((start[:2] + [10.0, 0.0] - env.get_state()[:2]) / 100.0)
    np.testing.assert_allclose(env.get_state()[:2] - start[:2], [10.0, 0.0], atol=1e-2)


def test_the_agent_pushes_the_block() -> None:
    env = placed(state=(300.0, 200.0, 300.0, 300.0, 0.0, 0.0, 0.0))
    for _ in range(10):
        env.step([0.0, 1.0])
    assert env.get_state()[3] > 320.0


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(19.9, True), (20.1, False)],
)
def test_success_at_the_position_threshold(offset: float, expected: bool) -> None:
    goal = np.array(GOAL)
    # The error counts agent and block together: split it over both.
    state = goal + [offset * 0.6, 0.0, 0.0, offset * 0.8, 0.0, 0.0, 0.0]
    assert is_success(state, goal) is expected


@pytest.mark.parametrize(
    ("goal_angle", "angle", "expected"),
    [
        (0.1, 0.1 + np.pi / 9 - 1e-3, True),
        (0.1, 0.1 + np.pi / 9 + 1e-3, False),
        (0.1, 0.1 - np.pi / 9 + 1e-3, True),
        (0.05, 2 * np.pi - 0.05, True),  # 0.1 apart across the 0/2π seam
        (0.05, 2 * np.pi - 0.05 - np.pi / 9, False),
        (-1.0, 2 * np.pi - 1.0 + 0.2, True),  # unwrapped goal angles fold too
        (0.0, np.pi, False),  # the T has no half-turn symmetry
    ],
)
def test_success_at_the_angle_threshold(goal_angle: float, angle: float, expected: bool) -> None:
    goal = np.array(GOAL)
    goal[4] = goal_angle
    state = goal.copy()
    state[4] = angle
    assert is_success(state, goal) is expected


def test_fold_angle() -> None:
    np.testing.assert_allclose(
        fold_angle([0.3, -0.3, 2 * np.pi - 0.3, np.pi + 0.3]), [0.3, 0.3, 0.3, np.pi - 0.3]
    )


def test_env_reports_success_and_terminates_at_the_goal() -> None:
    near = np.array(GOAL) + [0.0, 10.0, 10.0, 0.0, 0.3, 0.0, 0.0]
    env = placed(state=near)
    assert env.is_success()
    _, reward, terminated, truncated, info = env.step([0.0, 0.0])
    assert info["success"] and terminated and not truncated
    assert reward == pytest.approx(-np.linalg.norm(info["state"] - info["goal_state"]), rel=1e-5)
    far = placed(state=np.array(GOAL) + [0.0, 0.0, 0.0, 0.0, 0.4, 0.0, 0.0])
    assert not far.step([0.0, 0.0])[4]["success"]


def test_set_state_round_trip() -> None:
    env = PushTEnv(32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        # Far from each other and from the walls (the T reaches 121 units from its origin).
        agent = rng.uniform(50, 100, 2)
        block = rng.uniform(200, 300, 2)
        state = np.concatenate([agent, block, [rng.uniform(0, 2 * np.pi)], [0.0, 0.0]])
        state = state.astype(np.float32)
        env.set_state(state)
        np.testing.assert_array_equal(env.get_state(), state)
        env.set_state(env.get_state())
        np.testing.assert_array_equal(env.get_state(), state)


def test_set_state_order_velocity_and_angle_wrapping() -> None:
    env = PushTEnv(32)
    env.set_state([100.0, 100.0, 300.0, 300.0, -1.0, 50.0, -20.0])
    got = env.get_state()
    # The block's origin lands exactly on the given position although the angle is applied
    # about the centre of gravity; the angle is reported modulo 2π.
    np.testing.assert_allclose(got[2:5], [300.0, 300.0, 2 * np.pi - 1.0], rtol=0, atol=1e-4)
    # One 0.01 physics step follows the setters: the agent has moved by its velocity.
    np.testing.assert_allclose(got[[0, 1, 5, 6]], [100.5, 99.8, 50.0, -20.0], atol=1e-4)
    env.set_state([100.0, 100.0, 300.0, 300.0, 1.0])  # 5-D: zero velocity
    np.testing.assert_array_equal(env.get_state()[5:], [0.0, 0.0])
    with pytest.raises(ValueError, match="7 entries"):
        env.set_state([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"goal": GOAL})


def test_info_carries_state_proprio_and_goal() -> None:
    env = PushTEnv(32)
    obs, info = env.reset(seed=3)
    assert obs.shape == (7,) and obs.dtype == np.float32
    np.testing.assert_array_equal(info["state"], obs)
    np.testing.assert_array_equal(info["proprio"], obs[[0, 1, 5, 6]])
    goal = info["goal_state"]
    assert goal.shape == (7,) and 0.0 <= goal[4] < 2 * np.pi
    assert 50 <= goal[0] <= 450 and 100 <= goal[2] <= 400


def run_policy(seed: int, steps: int, resolution: int = 32) -> tuple[list[np.ndarray], PushTEnv]:
    env = PushTEnv(resolution)
    env.reset(seed=seed)
    policy = PushTWeakPolicy(env, np.random.default_rng(seed))
    frames = [env.render()]
    for _ in range(steps):
        env.step(policy())
        frames.append(env.render())
    return frames, env


def test_same_seed_same_first_frames() -> None:
    a, _ = run_policy(7, 5)
    b, _ = run_policy(7, 5)
    c, _ = run_policy(8, 5)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("resolution", [64, 224])
def test_render_shape_dtype_and_content(resolution: int) -> None:
    env = placed(resolution=resolution)
    frame = env.render()
    assert frame.shape == (resolution, resolution, 3) and frame.dtype == np.uint8
    # The agent (royal blue) and the block (slate grey) are both visible.
    blue = (frame[:, :, 2] > 200) & (frame[:, :, 0] < 100)
    slate = np.abs(frame.astype(int) - [143, 163, 184]).sum(axis=2) < 10
    assert blue.any() and slate.any()
    # The agent is drawn where it is: at (100, 100) of 512, left of and above the block.
    rows, cols = np.nonzero(blue)
    np.testing.assert_allclose([rows.mean(), cols.mean()], [resolution * 100 / 512] * 2, atol=1.5)


def test_goal_image_is_a_render_of_the_goal_state() -> None:
    env = placed(resolution=64)
    goal_image = env.render_goal()
    assert not np.array_equal(goal_image, env.render())
    other = PushTEnv(64)
    other.set_state(GOAL)
    np.testing.assert_array_equal(goal_image, other.render())


def test_weak_policy_stays_near_the_block_and_moves_it() -> None:
    moved = 0
    for seed in range(8):
        env = PushTEnv(16)
        env.reset(seed=seed)
        policy = PushTWeakPolicy(env, np.random.default_rng(seed))
        start = env.get_state()
        for _ in range(60):
            state = env.get_state()
            action = policy()
            assert action.dtype == np.float32 and np.abs(action).max() <= 1.0
            target = state[:2] + 100.0 * action
            gap = state[2:4] - state[:2]
            near = np.abs(gap) <= 100.0
            # Near the block (per axis) the target stays in the block's ±100 box; far from
            # it, the agent heads toward the block.
            assert np.all(np.abs(target - state[2:4])[near] <= 100.0 + 1e-3)
            assert np.all(np.sign(action[~near]) == np.sign(gap[~near]))
            env.step(action)
        moved += np.linalg.norm(env.get_state()[2:4] - start[2:4]) > 1.0
    assert moved >= 5


def test_registry_entry() -> None:
    spec = get_env_spec("pusht")
    assert (spec.max_steps, spec.frameskip, spec.action_dim) == (200, 5, 2)
    assert spec.state_keys == ("state",)
    env = spec.make(32)
    _, info = env.reset(seed=0)
    assert set(spec.info_keys) <= set(info)
    assert spec.make_policy(env, np.random.default_rng(0))().shape == (2,)


def test_collect_writes_a_readable_file(tmp_path) -> None:
    path = collect("pusht", 2, tmp_path / "pusht.h5", resolution=32, seed=0, progress=False)
    with EpisodeStore(path) as store:
        assert store.num_episodes == 2 and store.env_name == "pusht"
        assert store.image_size == 32 and store.action_dim == 2
        state = store.read("state", store.episode_rows(0))
        assert state.shape[1] == 7 and len(state) == store.ep_len[0]
        assert store.read("proprio", store.episode_rows(0)).shape[1] == 4
        assert not np.array_equal(state[0], state[1])
        assert store.read("pixels", store.episode_rows(0)).shape[1:] == (32, 32, 3)
