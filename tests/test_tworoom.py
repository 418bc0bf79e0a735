"""TwoRoom dynamics, rendering, policy and the environment registry (ENVIRONMENTS.md §2)."""

from __future__ import annotations

import numpy as np
import pytest

from lewm.envs import (
    ENV_NAMES,
    TwoRoomEnv,
    TwoRoomPolicy,
    UnknownEnvError,
    get_env_spec,
    make_env,
)

RIGHT = np.array([1.0, 0.0], dtype=np.float32)
LEFT = np.array([-1.0, 0.0], dtype=np.float32)


def placed(
    agent: tuple[float, float], goal: tuple[float, float] = (200.0, 200.0), resolution: int = 64
) -> TwoRoomEnv:
    env = TwoRoomEnv(resolution)
    env.reset(seed=0, options={"state": agent, "goal_state": goal})
    return env


def push(env: TwoRoomEnv, action: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        env.step(action)
    return env.get_state()


@pytest.mark.parametrize("y", [25.0, 30.0, 70.0, 150.0])
def test_wall_blocks_left_room_outside_the_door(y: float) -> None:
    env = placed((90.0, y))
    assert push(env, RIGHT, 10).tolist() == [99.5, y]


@pytest.mark.parametrize("y", [25.0, 100.0])
def test_wall_blocks_right_room_outside_the_door(y: float) -> None:
    env = placed((135.0, y))
    assert push(env, LEFT, 10).tolist() == [124.5, y]


@pytest.mark.parametrize("y", [36.0, 49.0, 64.0])
def test_door_lets_the_agent_through_both_ways(y: float) -> None:
    env = placed((90.0, y))
    assert push(env, RIGHT, 10)[0] > 124.0
    assert push(env, LEFT, 10)[0] < 100.0


def test_boundary_clamps_to_the_inner_border_minus_radius() -> None:
    env = placed((25.0, 190.0))
    assert push(env, np.array([-1.0, 1.0]), 5).tolist() == [21.0, 203.0]
    env = placed((190.0, 25.0))
    assert push(env, np.array([1.0, -1.0]), 5).tolist() == [203.0, 21.0]


def test_speed_is_five_units_per_step_and_actions_are_clamped() -> None:
    env = placed((50.0, 150.0))
    env.step(np.array([1.0, 0.0]))
    np.testing.assert_allclose(env.get_state(), [55.0, 150.0])
    env.step(np.array([3.0, -7.0]))
    np.testing.assert_allclose(env.get_state(), [60.0, 145.0])
    env.step(np.array([0.5, 0.2]))
    np.testing.assert_allclose(env.get_state(), [62.5, 146.0], atol=1e-5)


@pytest.mark.parametrize(("distance", "expected"), [(15.9, True), (16.1, False)])
def test_success_threshold(distance: float, expected: bool) -> None:
    env = TwoRoomEnv(64)
    _, info = env.reset(options={"state": (50.0, 100.0), "goal_state": (50.0 + distance, 100.0)})
    assert info["success"] is expected
    _, reward, terminated, truncated, info = env.step(np.zeros(2))
    assert (terminated, info["success"], reward, truncated) == (expected, expected, 0.0, False)


def test_step_returns_documented_types() -> None:
    env = TwoRoomEnv(64)
    env.reset(seed=3)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32 and obs.shape == (10,)
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs[:2], info["proprio"])
    np.testing.assert_array_equal(obs[2:4], info["goal_state"])
    np.testing.assert_array_equal(obs[4:], [112.0, 49.0, 0, 0, 0, 0])
    np.testing.assert_array_equal(info["state"], info["proprio"])
    for key in ("proprio", "state", "goal_state"):
        assert info[key].dtype == np.float32 and info[key].shape == (2,)


def rollout(seed: int, steps: int = 5) -> tuple[np.ndarray, list[np.ndarray]]:
    env = TwoRoomEnv(64)
    obs, _ = env.reset(seed=seed)
    frames = [env.render()]
    for _ in range(steps):
        env.step(RIGHT)
        frames.append(env.render())
    return obs, frames


def test_same_seed_gives_same_episode_and_frames() -> None:
    obs_a, frames_a = rollout(7)
    obs_b, frames_b = rollout(7)
    np.testing.assert_array_equal(obs_a, obs_b)
    for a, b in zip(frames_a, frames_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_give_different_episodes() -> None:
    obs_a, frames_a = rollout(7)
    obs_b, frames_b = rollout(8)
    assert not np.array_equal(obs_a[:4], obs_b[:4])
    assert not np.array_equal(frames_a[0], frames_b[0])


def test_reset_samples_agent_outside_the_wall_band_and_inside_the_sampling_box() -> None:
    env = TwoRoomEnv(64)
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        assert not 100.0 <= obs[0] <= 124.0
        assert np.all((obs[:4] >= 14.0) & (obs[:4] <= 209.0))


def test_reset_options_override_state_and_goal() -> None:
    env = TwoRoomEnv(64)
    obs, info = env.reset(seed=1, options={"state": [30.0, 40.0]})
    np.testing.assert_array_equal(info["proprio"], [30.0, 40.0])
    sampled_goal = info["goal_state"]
    obs, info = env.reset(seed=1, options={"goal_state": np.array([150.0, 60.0])})
    np.testing.assert_array_equal(info["goal_state"], [150.0, 60.0])
    _, plain = env.reset(seed=1)
    np.testing.assert_array_equal(plain["goal_state"], sampled_goal)
    np.testing.assert_array_equal(plain["proprio"], info["proprio"])


@pytest.mark.parametrize(
    "options",
    [
        {"state": [1.0, 2.0, 3.0]},
        {"state": [[1.0, 2.0]]},
        {"goal_state": 5.0},
        {"goal_state": [np.nan, 1.0]},
        {"state": "ab"},
    ],
)
def test_bad_reset_options_raise_naming_the_option(options: dict) -> None:
    name = next(iter(options))
    with pytest.raises(ValueError, match=f"options\\['{name}'\\]"):
        TwoRoomEnv(64).reset(options=options)


def test_unknown_reset_option_raises() -> None:
    with pytest.raises(ValueError, match="goal"):
        TwoRoomEnv(64).reset(options={"goal": [1.0, 2.0]})


def test_set_state_round_trips_and_validates() -> None:
    env = TwoRoomEnv(64)
    env.reset(seed=2)
    state = env.get_state()
    env.step(RIGHT)
    env.set_state(state)
    np.testing.assert_array_equal(env.get_state(), state)
    env.set_goal_state((60.0, 70.0))
    np.testing.assert_array_equal(env.get_goal_state(), [60.0, 70.0])
    with pytest.raises(ValueError, match="state"):
        env.set_state([1.0])


@pytest.mark.parametrize("resolution", [64, 224])
def test_render_shape_and_dtype(resolution: int) -> None:
    env = TwoRoomEnv(resolution)
    env.reset(seed=0)
    for frame in (env.render(), env.render_goal()):
        assert frame.shape == (resolution, resolution, 3) and frame.dtype == np.uint8


@pytest.mark.parametrize("resolution", [0, 7, 64.0, True])
def test_bad_resolution_raises(resolution: object) -> None:
    with pytest.raises(ValueError, match="resolution"):
        TwoRoomEnv(resolution)  # type: ignore[arg-type]


def test_scene_shows_wall_door_and_border_at_64_px() -> None:
    env = placed((180.0, 180.0))
    frame = env.render().astype(int)
    pixel = 224 / 64
    wall_col = int(112 / pixel)
    door_row, solid_row = int(49 / pixel), int(150 / pixel)
    assert frame[solid_row, wall_col].tolist() == [0, 0, 0]
    assert frame[door_row, wall_col].tolist() == [255, 255, 255]
    border_col = int(12 / pixel)
    assert frame[100 // 4, border_col].max() < 128
    assert frame[100 // 4, border_col + 2].tolist() == [255, 255, 255]


def test_render_goal_equals_render_with_agent_at_goal() -> None:
    env = TwoRoomEnv(64)
    env.reset(seed=4)
    goal_image = env.render_goal()
    assert not np.array_equal(goal_image, env.render())
    env.set_state(env.get_goal_state())
    np.testing.assert_array_equal(goal_image, env.render())


@pytest.mark.parametrize(("resolution", "row", "col"), [(64, 40, 12), (224, 150, 60)])
def test_red_dot_is_drawn_at_the_agent_pixel(resolution: int, row: int, col: int) -> None:
    pixel = 224 / resolution
    agent = ((col + 0.5) * pixel, (row + 0.5) * pixel)
    env = placed(agent, resolution=resolution)
    frame = env.render().astype(int)
    assert frame[row, col].tolist() == [255, 0, 0]
    redness = frame[..., 0] - frame[..., 1]
    assert np.unravel_index(np.argmax(redness), redness.shape) == (row, col)
    far = ((row + resolution // 2) % resolution, (col + resolution // 2) % resolution)
    assert redness[far] == 0


@pytest.mark.parametrize("resolution", [8, 64, 224])
@pytest.mark.parametrize("agent", [(21.0, 21.0), (99.5, 49.0), (150.3, 202.9), (5.0, 220.0)])
def test_windowed_dot_equals_blending_over_the_whole_image(
    resolution: int, agent: tuple[float, float]
) -> None:
    env = placed(agent, resolution=resolution)
    background = placed((-1e4, -1e4), resolution=resolution).render().astype(np.float64)
    centres = (np.arange(resolution) + 0.5) * 224 / resolution
    d2 = (centres[None, :] - agent[0]) ** 2 + (centres[:, None] - agent[1]) ** 2
    alpha = np.exp(-d2 / (2 * 7.0**2))[:, :, None]
    expected = np.rint(background * (1 - alpha) + np.array([255.0, 0, 0]) * alpha)
    np.testing.assert_array_equal(env.render(), expected.astype(np.uint8))


def test_agent_colour_is_settable() -> None:
    env = placed((16.5 * 3.5, 48.5 * 3.5))
    env.agent_color = (0, 0, 255)
    assert env.render()[48, 16].tolist() == [0, 0, 255]


def run_policy(env: TwoRoomEnv, policy: TwoRoomPolicy, max_steps: int = 100) -> bool:
    for _ in range(max_steps):
        _, _, terminated, _, _ = env.step(policy())
        if terminated:
            return True
    return False


def test_policy_actions_are_float32_in_the_box() -> None:
    env = TwoRoomEnv(64)
    env.reset(seed=0)
    policy = TwoRoomPolicy(env, np.random.default_rng(0))
    actions = np.stack([policy() for _ in range(200)])
    assert actions.dtype == np.float32 and actions.shape == (200, 2)
    assert np.all(np.abs(actions) <= 1.0)
    assert np.mean(np.abs(actions) == 1.0) > 0.4


def test_noisy_policy_goes_through_the_door_for_most_seeds() -> None:
    # Heading straight for this target pins the agent against the wall below the door.
    env = TwoRoomEnv(64)
    reached = 0
    for seed in range(10):
        env.reset(seed=seed, options={"state": (70.0, 90.0), "goal_state": (150.0, 90.0)})
        reached += run_policy(env, TwoRoomPolicy(env, np.random.default_rng(seed)))
    assert reached >= 8


def test_noiseless_policy_always_reaches_a_target_in_the_other_room() -> None:
    env = TwoRoomEnv(64)
    episodes = 0
    for seed in range(60):
        _, info = env.reset(seed=seed)
        if (info["proprio"][0] < 112) == (info["goal_state"][0] < 112):
            continue
        episodes += 1
        policy = TwoRoomPolicy(env, np.random.default_rng(seed), noise_std=0.0)
        assert run_policy(env, policy), f"seed {seed}"
    assert episodes >= 15


def test_registry_spec_and_make_env() -> None:
    assert "tworoom" in ENV_NAMES
    spec = get_env_spec("tworoom")
    assert (spec.max_steps, spec.frameskip, spec.action_dim) == (100, 5, 2)
    assert spec.state_keys == ("proprio",)
    assert spec.info_keys == ("proprio", "state", "goal_state")
    env = make_env("tworoom", 32)
    _, info = env.reset(seed=0)
    assert env.render().shape == (32, 32, 3)
    assert set(spec.info_keys) <= set(info)
    env.set_state(spec.state_of(info))
    action = spec.make_policy(env, np.random.default_rng(0))()
    assert action.shape == (spec.action_dim,) and action.dtype == np.float32


def test_unknown_env_raises_with_the_list_of_names() -> None:
    with pytest.raises(UnknownEnvError, match="unknown environment 'foo'; choose one of: tworoom"):
        get_env_spec("foo")
    with pytest.raises(ValueError):
        make_env("foo", 64)
