"""PushT: push a T-shaped block with a round agent (ENVIRONMENTS.md §1).

The dynamics follow stable-worldmodel's ``swm/PushT-v1`` (the environment the paper's
PushT results were measured in) on pymunk 7: relative actions tracked by a PD controller,
a kinematic agent, a dynamic T with the reference's inertia quirk, and the reference's
set-state order. gym-pusht is not used because its actions are absolute, its success is a
coverage test and it pins pymunk < 7.

Rendering needs no display and no pygame: each shape is drawn from its signed distance,
evaluated at pixel centres only inside the shape's bounding box, and turned into an
antialiased coverage. The static scene (walls and the fixed green T) is drawn once per
instance, so a frame costs well under a millisecond at 224 px.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pymunk
from gymnasium import spaces

from lewm.envs.protocol import (
    check_render,
    check_render_mode,
    check_resolution,
    reset_options,
    start_and_goal,
)

WORLD_SIZE = 512.0
WALL_CORNERS = ((5.0, 5.0), (506.0, 5.0), (506.0, 506.0), (5.0, 506.0))
WALL_RADIUS = 2.0
AGENT_RADIUS = 15.0
AGENT_INNER_RADIUS = 11.0
# Body-frame polygons of the T: the bar, then the stem hanging below it (y points down).
BAR = ((-60.0, 0.0), (60.0, 0.0), (60.0, 30.0), (-60.0, 30.0))
STEM = ((-15.0, 30.0), (15.0, 30.0), (15.0, 120.0), (-15.0, 120.0))
BLOCK_MASS = 1.0
OUTLINE_RADIUS = 2.0
# The reference draws the green T at this fixed pose whatever the goal is; it is scenery.
GOAL_T_POSE = (256.0, 256.0, np.pi / 4)

ACTION_SCALE = 100.0
K_P = 100.0
K_V = 20.0
SUBSTEPS = 10
DT = 0.01

SUCCESS_POSITION = 20.0
SUCCESS_ANGLE = np.pi / 9

AGENT_SAMPLE = (50.0, 450.0)
BLOCK_SAMPLE = (100.0, 400.0)
ANGLE_SAMPLE = (-2.0 * np.pi, 2.0 * np.pi)
DEFAULT_STATE = (256.0, 400.0, 400.0, 100.0, 0.0, 0.0, 0.0)

WHITE = (255.0, 255.0, 255.0)
LIGHT_GREEN = (144.0, 238.0, 144.0)
LIGHT_GRAY = (211.0, 211.0, 211.0)
ROYAL_BLUE = (65.0, 105.0, 225.0)
LIGHT_SLATE_GRAY = (119.0, 136.0, 153.0)


def _lighter(colour: tuple[float, ...]) -> np.ndarray:
    """The reference's fill colour: 1.2 times the base colour, saturating at 255."""
    return np.minimum(1.2 * np.asarray(colour, dtype=np.float32), 255.0)


def fold_angle(delta: Any) -> np.ndarray:
    """|Δθ| wrapped to [0, π]: the rotation separating two angles, whichever way round."""
    d = np.mod(np.abs(np.asarray(delta, dtype=np.float64)), 2.0 * np.pi)
    return np.minimum(d, 2.0 * np.pi - d)


def is_success(state: Any, goal: Any) -> bool:
    """Agent and block positions within 20 units jointly, block angle within π/9.

    The T has no rotational symmetry, so the angle error is folded only by 2π.
    """
    s = np.asarray(state, dtype=np.float64)
    g = np.asarray(goal, dtype=np.float64)
    position_error = float(np.linalg.norm(g[:4] - s[:4]))
    return bool(position_error < SUCCESS_POSITION and fold_angle(g[4] - s[4]) < SUCCESS_ANGLE)


def _as_state(value: Any, name: str) -> np.ndarray:
    """A 7-D float32 state; a 5-D one (no velocity, as in older datasets) gets zero velocity."""
    try:
        state = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a vector of numbers, got {value!r}") from err
    if state.shape == (5,):
        state = np.concatenate([state, np.zeros(2, dtype=np.float32)])
    if state.shape != (7,):
        raise ValueError(
            f"{name} must have 7 entries (agent x, y, block x, y, angle, agent vx, vy) "
            f"or 5 (without velocity), got shape {state.shape}"
        )
    if not np.all(np.isfinite(state)):
        raise ValueError(f"{name} must be finite, got {state.tolist()}")
    return state


def pose_vertices(polygon: tuple[tuple[float, float], ...], pose: np.ndarray) -> np.ndarray:
    """World vertices of a body-frame polygon for a body origin (x, y) and angle.

    float32, like the pixel grid: rasterising in single precision halves the frame cost
    and is far finer than a pixel.
    """
    c, s = np.cos(pose[2]), np.sin(pose[2])
    local = np.asarray(polygon, dtype=np.float64)
    return (local @ np.array([[c, s], [-s, c]]) + pose[:2]).astype(np.float32)


def _segment_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each point to the segment a–b."""
    ab = b - a
    t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1]) * (1 / (ab @ ab))
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(px - (a[0] + t * ab[0]), py - (a[1] + t * ab[1]))


def polygon_sdf(px: np.ndarray, py: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance to a convex polygon, negative inside, exact everywhere."""
    edges = list(zip(vertices, np.roll(vertices, -1, axis=0), strict=True))
    distance = np.min([_segment_distance(px, py, a, b) for a, b in edges], axis=0)
    cross = np.array([(b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0]) for a, b in edges])
    inside = np.all(cross >= 0, axis=0) | np.all(cross <= 0, axis=0)
    return np.where(inside, -distance, distance)


class _Canvas:
    """Pixel-centre grid of one resolution, and antialiased drawing on a float image.

    Coverage is 0.5 − sd/pixel clipped to [0, 1]: a box filter across a straight edge, so
    edges stay smooth at 64 px and thin features (the 4-unit walls) remain visible.
    """

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        self.pixel = WORLD_SIZE / resolution
        self.centres = ((np.arange(resolution) + 0.5) * self.pixel).astype(np.float32)

    def window(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice]:
        """Rows and columns of the pixels whose coverage of the box [lo, hi] may be > 0."""
        pad = self.pixel
        start = np.floor((np.asarray(lo) - pad) / self.pixel).astype(int)
        stop = np.ceil((np.asarray(hi) + pad) / self.pixel).astype(int)
        start = np.clip(start, 0, self.resolution)
        stop = np.clip(stop, 0, self.resolution)
        return slice(start[1], stop[1]), slice(start[0], stop[0])

    def grid(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        return np.meshgrid(self.centres[cols], self.centres[rows])

    def coverage(self, sdf: np.ndarray, grow: float = 0.0) -> np.ndarray:
        return np.clip(0.5 - (sdf - grow) / self.pixel, 0.0, 1.0)

    def band(self, sdf: np.ndarray, half_width: float) -> np.ndarray:
        """Coverage of the strip within ``half_width`` of a shape's boundary (its outline)."""
        return self.coverage(sdf, half_width) - self.coverage(sdf, -half_width)


def _paint(image: np.ndarray, coverage: np.ndarray, colour: Any) -> None:
    image += coverage[:, :, None] * (np.asarray(colour, dtype=np.float32) - image)


class PushTEnv(gymnasium.Env):
    """Goal-conditioned pushing of a T block with the reference's relative PD actions.

    The observation is the 7-D state; ``info`` carries ``state``, ``proprio`` (agent
    position and velocity), ``goal_state`` and ``success``. States are reported in
    float32 so that ``set_state(get_state())`` and replaying a dataset's ``state`` column
    reproduce a pose exactly; the physics itself runs in double precision. The environment
    starts in the reference's default state, so it can render and step before ``reset``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self, resolution: int = 64, render: str = "faithful", render_mode: str | None = "rgb_array"
    ) -> None:
        self.render_quality = check_render(render)  # a 2-D scene: both modes draw alike
        self.resolution = check_resolution(resolution)
        self.render_mode = check_render_mode(render_mode)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(7,), dtype=np.float32)
        self._canvas = _Canvas(self.resolution)
        self._background = self._static_scene()
        self._build_space()
        self._goal = np.asarray(DEFAULT_STATE, dtype=np.float32)
        self.set_state(DEFAULT_STATE)

    def _build_space(self) -> None:
        """Zero damping: the block keeps no velocity between sub-steps, so it moves only
        while the agent pushes it. The kinematic agent ignores the walls, as in the
        reference (kinematic bodies do not collide with static ones)."""
        self.space = pymunk.Space()
        self.space.gravity = (0.0, 0.0)
        self.space.damping = 0.0
        corners = WALL_CORNERS
        walls = [
            pymunk.Segment(self.space.static_body, corners[i], corners[(i + 1) % 4], WALL_RADIUS)
            for i in range(4)
        ]
        self.agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        agent_shape = pymunk.Circle(self.agent, AGENT_RADIUS)
        # The reference gives the T twice the bar's moment of inertia; kept for comparable
        # dynamics.
        moment = 2.0 * pymunk.moment_for_poly(BLOCK_MASS, BAR)
        self.block = pymunk.Body(BLOCK_MASS, moment)
        bar, stem = pymunk.Poly(self.block, BAR), pymunk.Poly(self.block, STEM)
        self.block.center_of_gravity = (bar.center_of_gravity + stem.center_of_gravity) / 2
        self.space.add(*walls, self.agent, agent_shape, self.block, bar, stem)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Sample a goal then a start (the reference's order); ``options`` overrides either.

        Both are always sampled, so later draws from ``np_random`` do not depend on which
        options were given; unknown option keys are rejected rather than silently ignored.
        The physics starts afresh, as in the reference's reset: ``set_state`` sets no block
        velocity, so a block still moving from the last episode would otherwise drift during
        its physics step, and the same seed and actions would not give the same episode.
        """
        super().reset(seed=seed)
        options = reset_options(options)
        self._build_space()
        goal = self._sample_state()
        start, goal = start_and_goal(options, self._sample_state(), goal)
        self.set_goal_state(goal)
        self.set_state(start)
        return self.get_state(), self._info()

    def _sample_state(self) -> np.ndarray:
        agent = self.np_random.uniform(*AGENT_SAMPLE, size=2)
        block = self.np_random.uniform(*BLOCK_SAMPLE, size=2)
        angle = self.np_random.uniform(*ANGLE_SAMPLE)
        return np.concatenate([agent, block, [angle], [0.0, 0.0]])

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Track target = agent + 100·a with the PD controller for 10 sub-steps of 0.01.

        Neither the action nor the target is clipped, as in the reference: a planner's
        unclipped actions must behave there and here alike.
        """
        a = np.asarray(action, dtype=np.float64).reshape(2)
        target = np.asarray(self.agent.position) + ACTION_SCALE * a
        for _ in range(SUBSTEPS):
            p = np.asarray(self.agent.position)
            v = np.asarray(self.agent.velocity)
            self.agent.velocity = tuple(v + (K_P * (target - p) - K_V * v) * DT)
            self.space.step(DT)
        state = self.get_state()
        info = self._info()
        reward = -float(np.linalg.norm(self._goal.astype(np.float64) - state))
        return state, reward, info["success"], False, info

    def _info(self) -> dict[str, Any]:
        state = self.get_state()
        return {
            "proprio": state[[0, 1, 5, 6]],
            "state": state,
            "goal_state": self._goal.copy(),
            "success": is_success(state, self._goal),
        }

    def is_success(self) -> bool:
        return is_success(self.get_state(), self._goal)

    def get_state(self) -> np.ndarray:
        """Agent x, y; block x, y; block angle mod 2π; agent vx, vy."""
        a, b = self.agent.position, self.block.position
        v = self.agent.velocity
        angle = np.mod(self.block.angle, 2.0 * np.pi)
        return np.array([a.x, a.y, b.x, b.y, angle, v.x, v.y], dtype=np.float32)

    def set_state(self, state: Any) -> None:
        """The reference's order: velocity, agent position, angle, then block position.

        pymunk turns a body about its centre of gravity, so setting the angle after the
        position would move the block's origin; this order leaves the origin exactly at
        the given position. One 0.01 physics step follows, as in the reference.
        """
        s = _as_state(state, "state").astype(np.float64)
        self.agent.velocity = (s[5], s[6])
        self.agent.position = (s[0], s[1])
        self.block.angle = s[4]
        self.block.position = (s[2], s[3])
        self.space.step(DT)

    def get_goal_state(self) -> np.ndarray:
        return self._goal.copy()

    def set_goal_state(self, goal: Any) -> None:
        goal = _as_state(goal, "goal_state")
        goal[4] = np.float32(np.mod(np.float64(goal[4]), 2.0 * np.pi))
        self._goal = goal

    def render(self) -> np.ndarray:
        return self._draw(self.get_state())

    def render_goal(self) -> np.ndarray:
        """The scene drawn in the goal state (the green T stays at its fixed pose)."""
        return self._draw(self._goal)

    def _static_scene(self) -> np.ndarray:
        canvas, n = self._canvas, self.resolution
        image = np.empty((n, n, 3), dtype=np.float32)
        image[:] = WHITE
        px, py = canvas.grid(slice(0, n), slice(0, n))
        goal_t = np.asarray(GOAL_T_POSE)
        for polygon in (BAR, STEM):
            sdf = polygon_sdf(px, py, pose_vertices(polygon, goal_t))
            _paint(image, canvas.coverage(sdf), LIGHT_GREEN)
        for i in range(4):
            a, b = (np.asarray(WALL_CORNERS[j], dtype=np.float32) for j in (i, (i + 1) % 4))
            wall = _segment_distance(px, py, a, b) - WALL_RADIUS
            _paint(image, canvas.coverage(wall), LIGHT_GRAY)
        return np.rint(image).astype(np.uint8)

    def _draw(self, state: np.ndarray) -> np.ndarray:
        """Agent, then block over it (the reference's shape order), each in its own window."""
        canvas = self._canvas
        frame = self._background.copy()
        centre = np.asarray(state[:2], dtype=np.float32)
        rows, cols = canvas.window(centre - AGENT_RADIUS, centre + AGENT_RADIUS)
        if rows.stop > rows.start and cols.stop > cols.start:
            px, py = canvas.grid(rows, cols)
            r = np.hypot(px - centre[0], py - centre[1])
            patch = frame[rows, cols].astype(np.float32)
            _paint(patch, canvas.coverage(r - AGENT_RADIUS), ROYAL_BLUE)
            _paint(patch, canvas.coverage(r - AGENT_INNER_RADIUS), _lighter(ROYAL_BLUE))
            frame[rows, cols] = np.rint(patch).astype(np.uint8)
        pose = np.asarray(state[2:5], dtype=np.float64)
        polygons = [pose_vertices(p, pose) for p in (BAR, STEM)]
        corners = np.concatenate(polygons)
        rows, cols = canvas.window(
            corners.min(axis=0) - OUTLINE_RADIUS, corners.max(axis=0) + OUTLINE_RADIUS
        )
        if rows.stop > rows.start and cols.stop > cols.start:
            px, py = canvas.grid(rows, cols)
            patch = frame[rows, cols].astype(np.float32)
            for vertices in polygons:
                sdf = polygon_sdf(px, py, vertices)
                _paint(patch, canvas.coverage(sdf), _lighter(LIGHT_SLATE_GRAY))
                _paint(patch, canvas.band(sdf, OUTLINE_RADIUS), LIGHT_SLATE_GRAY)
            frame[rows, cols] = np.rint(np.clip(patch, 0, 255)).astype(np.uint8)
        return frame


class PushTWeakPolicy:
    """stable-worldmodel's ``WeakPolicy(dist_constraint=100)``, the own-data PushT policy.

    A uniform random relative target whose absolute position is clipped into the block's
    ±100 box, so the agent keeps hovering near the block and pushes it now and then. (The
    paper trained on DINO-WM expert data; this policy reached only 30–40% in the
    reference's experiments, so prefer expert data where available.)
    """

    def __init__(self, env: PushTEnv, rng: np.random.Generator, distance: float = 100.0):
        self.env = env
        self.rng = rng
        self.distance = float(distance)

    def __call__(self) -> np.ndarray:
        state = self.env.get_state().astype(np.float64)
        agent, block = state[:2], state[2:4]
        target = agent + ACTION_SCALE * self.rng.uniform(-1.0, 1.0, size=2)
        target = np.clip(target, block - self.distance, block + self.distance)
        return np.clip((target - agent) / ACTION_SCALE, -1.0, 1.0).astype(np.float32)
