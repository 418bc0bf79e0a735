"""TwoRoom: a point agent in two rooms joined by one door (ENVIRONMENTS.md §2).

The reference (stable-worldmodel ``swm/TwoRoom-v1``) renders with torch at about 31 ms a
frame, which makes collecting 10,000 episodes of pixels the slowest part of the pipeline.
Here the static scene is rasterised once per instance and only the agent's Gaussian dot is
blended in, in a small window, so a frame costs tens of microseconds. The dynamics and the
reset distribution follow the reference exactly so datasets and planning results compare.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from lewm.envs.protocol import check_render, check_render_mode, check_resolution, reset_options

WORLD_SIZE = 224.0
BORDER_OUTER = (10.0, 214.0)
BORDER_INNER = (14.0, 210.0)
WALL_X = (107.0, 117.0)
WALL_CENTRE_X = 112.0
DOOR_Y = (35.0, 63.0)
DOOR_CENTRE = (112.0, 49.0)
AGENT_RADIUS = 7.0
SPEED = 5.0
SUCCESS_DISTANCE = 16.0
# The reference keeps the whole disc inside the border, not just its centre.
POSITION_BOUNDS = (BORDER_INNER[0] + AGENT_RADIUS, BORDER_INNER[1] - AGENT_RADIUS)
# The reference tests the door against its span widened by a quarter radius, and stops an
# agent that hits the wall half a unit short of touching it.
DOOR_SPAN = (DOOR_Y[0] - AGENT_RADIUS / 4, DOOR_Y[1] + AGENT_RADIUS / 4)
LEFT_LIMIT = WALL_X[0] - AGENT_RADIUS
RIGHT_LIMIT = WALL_X[1] + AGENT_RADIUS
LEFT_STOP = LEFT_LIMIT - 0.5
RIGHT_STOP = RIGHT_LIMIT + 0.5
SAMPLE_RANGE = (14.0, 209.0)
AGENT_REJECT_X = (100.0, 124.0)
MAX_DOORS = 3
# Beyond 4 sigma the dot changes a pixel by < 0.1 of a grey level, so a window of that
# radius renders exactly what blending over the whole image would after rounding.
DOT_WINDOW = 4.0 * AGENT_RADIUS


def _interval_coverage(lo: float, hi: float, resolution: int) -> np.ndarray:
    """Fraction of each pixel's world-unit span covered by [lo, hi), for antialiasing."""
    size = WORLD_SIZE / resolution
    starts = np.arange(resolution) * size
    overlap = np.minimum(hi, starts + size) - np.maximum(lo, starts)
    return np.clip(overlap / size, 0.0, 1.0)


def _rect_coverage(x: tuple[float, float], y: tuple[float, float], resolution: int) -> np.ndarray:
    return np.outer(_interval_coverage(*y, resolution), _interval_coverage(*x, resolution))


def _static_scene(resolution: int) -> np.ndarray:
    """The white scene with its black border and wall, drawn by exact area coverage.

    Area coverage (rather than sampling pixel centres) keeps thin features such as the
    4-unit border visible at every resolution and makes a low-resolution frame the box
    filtered version of a high-resolution one.
    """
    ring = _rect_coverage(BORDER_OUTER, BORDER_OUTER, resolution) - _rect_coverage(
        BORDER_INNER, BORDER_INNER, resolution
    )
    wall_above_door = _rect_coverage(WALL_X, (BORDER_INNER[0], DOOR_Y[0]), resolution)
    wall_below_door = _rect_coverage(WALL_X, (DOOR_Y[1], BORDER_INNER[1]), resolution)
    black = np.clip(ring + wall_above_door + wall_below_door, 0.0, 1.0)
    grey = np.rint(255.0 * (1.0 - black)).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _as_point(value: Any, name: str) -> np.ndarray:
    try:
        point = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an (x, y) pair of numbers, got {value!r}") from err
    if point.shape != (2,):
        raise ValueError(f"{name} must have shape (2,) (agent x, y), got shape {point.shape}")
    if not np.all(np.isfinite(point)):
        raise ValueError(f"{name} must be finite, got {point.tolist()}")
    return point.copy()


class TwoRoomEnv(gymnasium.Env):
    """Goal-conditioned navigation through a door, with no physics engine.

    Positions are kept in float32 so that ``set_state(get_state())`` and replaying a
    dataset's ``proprio`` column reproduce a state bit for bit. The environment starts in
    a fixed valid state, so it can render and step before the first ``reset``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    agent_color: tuple[int, int, int] = (255, 0, 0)

    def __init__(
        self, resolution: int = 64, render: str = "faithful", render_mode: str | None = "rgb_array"
    ) -> None:
        self.render_quality = check_render(render)  # a 2-D scene: both modes draw alike
        self.resolution = check_resolution(resolution)
        self.render_mode = check_render_mode(render_mode)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(
            0.0, WORLD_SIZE, shape=(2 + 2 + 2 * MAX_DOORS,), dtype=np.float32
        )
        self.agent_color = TwoRoomEnv.agent_color
        self._background = _static_scene(self.resolution)
        self._background_f = self._background.astype(np.float32)
        self._pixel = WORLD_SIZE / self.resolution
        self._agent = np.array([56.0, 112.0], dtype=np.float32)
        self._goal = np.array([168.0, 112.0], dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Sample a start and a target; ``options`` overrides either.

        Both are always sampled, even when overridden, so the random stream and therefore
        every later draw from ``np_random`` do not depend on which options were given.
        Unknown option keys are rejected because a misspelt key would otherwise silently
        give a random episode instead of the requested one.
        """
        super().reset(seed=seed)
        options = reset_options(options)
        while True:
            agent = self.np_random.uniform(*SAMPLE_RANGE, size=2)
            if not AGENT_REJECT_X[0] <= agent[0] <= AGENT_REJECT_X[1]:
                break
        goal = self.np_random.uniform(*SAMPLE_RANGE, size=2)
        self._agent = agent.astype(np.float32)
        self._goal = goal.astype(np.float32)
        if options.get("state") is not None:
            self._agent = _as_point(options["state"], "options['state']")
        if options.get("goal_state") is not None:
            self._goal = _as_point(options["goal_state"], "options['goal_state']")
        return self._obs(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(2), -1.0, 1.0)
        self._agent = self._move(self._agent, a)
        info = self._info()
        return self._obs(), 0.0, info["success"], False, info

    @staticmethod
    def _move(position: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The reference's collision rule: only the new position is tested.

        Which side of the wall applies is decided by where the agent started the step, so
        an agent that slides out of the doorway is snapped back to its own room's side.
        """
        new = np.clip(position + np.float32(SPEED) * action, *POSITION_BOUNDS).astype(np.float32)
        outside_door = not DOOR_SPAN[0] <= new[1] <= DOOR_SPAN[1]
        if position[0] < WALL_CENTRE_X:
            if new[0] > LEFT_LIMIT and outside_door:
                new[0] = LEFT_STOP
        elif new[0] < RIGHT_LIMIT and outside_door:
            new[0] = RIGHT_STOP
        return new

    def _obs(self) -> np.ndarray:
        doors = np.zeros(2 * MAX_DOORS, dtype=np.float32)
        doors[:2] = DOOR_CENTRE
        return np.concatenate([self._agent, self._goal, doors]).astype(np.float32)

    def _info(self) -> dict[str, Any]:
        return {
            "proprio": self._agent.copy(),
            "state": self._agent.copy(),
            "goal_state": self._goal.copy(),
            "success": self.is_success(),
        }

    def is_success(self) -> bool:
        return bool(np.linalg.norm(self._agent - self._goal) < SUCCESS_DISTANCE)

    def render(self) -> np.ndarray:
        """The current scene; the target is not drawn, as in the reference."""
        return self._draw(self._agent)

    def render_goal(self) -> np.ndarray:
        """The goal image: what ``render`` shows once the agent stands on the target."""
        return self._draw(self._goal)

    def _draw(self, centre: np.ndarray) -> np.ndarray:
        """Blend the agent's Gaussian dot into the background, evaluated at pixel centres.

        The Gaussian is separable, so the window's alpha is an outer product of two short
        vectors; nothing outside the window is touched.
        """
        frame = self._background.copy()
        rows = self._window(float(centre[1]))
        cols = self._window(float(centre[0]))
        if rows.stop <= rows.start or cols.stop <= cols.start:
            return frame
        inv = 1.0 / (2.0 * AGENT_RADIUS**2)
        ys = (np.arange(rows.start, rows.stop, dtype=np.float32) + 0.5) * self._pixel - centre[1]
        xs = (np.arange(cols.start, cols.stop, dtype=np.float32) + 0.5) * self._pixel - centre[0]
        alpha = np.outer(np.exp(-inv * ys * ys), np.exp(-inv * xs * xs))[:, :, None]
        colour = np.asarray(self.agent_color, dtype=np.float32)
        under = self._background_f[rows, cols]
        blended = under + alpha * (colour - under)
        frame[rows, cols] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return frame

    def _window(self, centre: float) -> slice:
        lo = int(np.floor((centre - DOT_WINDOW) / self._pixel))
        hi = int(np.ceil((centre + DOT_WINDOW) / self._pixel))
        return slice(max(lo, 0), min(hi, self.resolution))

    def get_state(self) -> np.ndarray:
        return self._agent.copy()

    def set_state(self, state: Any) -> None:
        self._agent = _as_point(state, "state")

    def get_goal_state(self) -> np.ndarray:
        return self._goal.copy()

    def set_goal_state(self, goal: Any) -> None:
        self._goal = _as_point(goal, "goal_state")


class TwoRoomPolicy:
    """The noisy door-then-target heuristic that generated the paper's TwoRoom data.

    The noise (std 2 around a unit direction, then clipping) saturates most components,
    which is what gives the dataset its broad action coverage; keep it at 2.0 to match the
    released data, and use 0 for a deterministic expert.
    """

    def __init__(self, env: TwoRoomEnv, rng: np.random.Generator, noise_std: float = 2.0):
        self.env = env
        self.rng = rng
        self.noise_std = float(noise_std)

    def waypoint(self) -> np.ndarray:
        """The door while the target is in the other room and the door is not yet close.

        Decided afresh at every step from the current positions, so the policy stays valid
        after ``set_state`` or a teleport perturbation.
        """
        agent = self.env.get_state()
        goal = self.env.get_goal_state()
        door = np.asarray(DOOR_CENTRE, dtype=np.float32)
        other_room = (agent[0] < WALL_CENTRE_X) != (goal[0] < WALL_CENTRE_X)
        if other_room and np.linalg.norm(door - agent) >= 10.5:
            return door
        return goal

    def __call__(self) -> np.ndarray:
        delta = self.waypoint() - self.env.get_state()
        norm = float(np.linalg.norm(delta))
        direction = delta / norm if norm > 0 else np.zeros(2, dtype=np.float32)
        action = direction + self.rng.normal(0.0, self.noise_std, size=2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
