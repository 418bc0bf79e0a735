"""Reacher: dm_control's two-link planar arm, reaching a joint configuration (ENVIRONMENTS.md §3).

The physics is dm_control's own ``reacher`` model; only the task around it is ours, with
the semantics of stable-worldmodel's ``swm/ReacherDMControl-v0`` in its ``qpos_match``
mode, the one the paper evaluates: the goal is a pair of joint angles, reached when both
joints are within 0.05 rad (raw difference, no wrapping) after any physics sub-step of an
action. The dm_control target sphere is still placed at random (the observation's
``to_target`` refers to it, as in the reference) but drawn fully transparent, so images
show only the arm.

Randomness comes only from gymnasium's ``np_random``, seeded by ``reset(seed=...)``, so the
same seed always gives the same episode.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from lewm.envs.gl import ensure_gl_backend
from lewm.envs.protocol import (
    check_render,
    check_render_mode,
    check_resolution,
    reset_options,
    start_and_goal,
    state_vector,
)

ACTION_REPEAT = 2
# What render="fast" turns off besides multisampling (dm_control's flag names).
FAST_FLAGS = {"shadow": False, "reflection": False}
SUCCESS_TOLERANCE = 0.05
WRIST_LIMIT = np.deg2rad(160.0)
TARGET_RADIUS = (0.05, 0.20)
STATE_DIM = 4  # qpos (shoulder, wrist), qvel (shoulder, wrist)
CAMERA = 0  # dm_control's "fixed" top-down camera


def is_success(qpos: Any, target_qpos: Any) -> bool:
    """Both joints within tolerance of the target angles (no angle wrapping, as the reference)."""
    delta = np.abs(np.asarray(qpos, dtype=np.float64) - np.asarray(target_qpos, dtype=np.float64))
    return bool(np.all(delta < SUCCESS_TOLERANCE))


def _as_state(value: Any, name: str) -> np.ndarray:
    return state_vector(value, name, STATE_DIM, "qpos shoulder, wrist; qvel shoulder, wrist")


def _load_physics() -> Any:
    """dm_control's reacher physics; the GL backend must be chosen before dm_control loads."""
    ensure_gl_backend()
    from dm_control.suite import reacher

    return reacher.Physics.from_xml_string(*reacher.get_model_and_assets())


class ReacherEnv(gymnasium.Env):
    """Torque-controlled two-link arm; the goal is a joint configuration (``qpos_match``)."""

    # One step is two physics steps of 0.02 s.
    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(
        self, resolution: int = 64, render: str = "faithful", render_mode: str | None = "rgb_array"
    ) -> None:
        self.resolution = check_resolution(resolution)
        self.render_quality = check_render(render)
        self.render_mode = check_render_mode(render_mode)
        self.physics = _load_physics()
        if self.render_quality == "fast":
            # Read when the rendering context is made, at the first render.
            self.physics.model.vis.quality.offsamples = 0
        self.physics.named.model.geom_rgba["target", 3] = 0.0
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float64)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(6,), dtype=np.float32)
        self._goal = np.zeros(STATE_DIM)
        self._success = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw the target sphere, a goal and a start (always all three, in that order, so
        later draws do not depend on the options); ``options`` overrides goal or start."""
        super().reset(seed=seed)
        options = reset_options(options)
        angle = self.np_random.uniform(0.0, 2.0 * np.pi)
        radius = self.np_random.uniform(*TARGET_RADIUS)
        self.physics.named.model.geom_pos["target", "x"] = radius * np.sin(angle)
        self.physics.named.model.geom_pos["target", "y"] = radius * np.cos(angle)
        goal = self._sample_state()
        start, goal = start_and_goal(options, self._sample_state(), goal)
        self.set_goal_state(goal)
        self.set_state(start)
        return self._observation(), self._info()

    def _sample_state(self) -> np.ndarray:
        """dm_control's joint randomisation: the free shoulder anywhere, the wrist in its
        limits; at rest."""
        shoulder = self.np_random.uniform(-np.pi, np.pi)
        wrist = self.np_random.uniform(-WRIST_LIMIT, WRIST_LIMIT)
        return np.array([shoulder, wrist, 0.0, 0.0])

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Hold the torque command for two physics steps of 0.02 s; success is checked after
        each, so passing through the goal between frames counts."""
        a = np.asarray(action, dtype=np.float64).reshape(2)
        self.physics.set_control(np.clip(a, -1.0, 1.0))
        self._success = False
        for _ in range(ACTION_REPEAT):
            self.physics.step()
            self._success = self._success or self.is_success()
        info = self._info()
        reward = -float(np.linalg.norm(self.physics.data.qpos - self._goal[:2]))
        return self._observation(), reward, self._success, False, info

    def _observation(self) -> np.ndarray:
        data = self.physics.data
        return np.concatenate(
            [data.qpos, self.physics.finger_to_target(), data.qvel]
        ).astype(np.float32)

    def _info(self) -> dict[str, Any]:
        named = self.physics.named.data
        return {
            "qpos": self.physics.data.qpos.copy(),
            "qvel": self.physics.data.qvel.copy(),
            "observation": self._observation(),
            "target_pos": named.geom_xpos["target", :2].copy(),
            "finger_pos": named.geom_xpos["finger", :2].copy(),
            "goal_qpos": self._goal[:2].copy(),
            "success": self._success,
        }

    def is_success(self) -> bool:
        return is_success(self.physics.data.qpos, self._goal[:2])

    def get_state(self) -> np.ndarray:
        """qpos then qvel, the order of ``set_state(qpos, qvel)`` in the reference."""
        data = self.physics.data
        return np.concatenate([data.qpos, data.qvel])

    def set_state(self, state: Any) -> None:
        s = _as_state(state, "state")
        with self.physics.reset_context():
            self.physics.data.qpos[:] = s[:2]
            self.physics.data.qvel[:] = s[2:]
        self._success = self.is_success()

    def get_goal_state(self) -> np.ndarray:
        return self._goal.copy()

    def set_goal_state(self, goal: Any) -> None:
        """Only the goal's joint angles matter for success; its velocities are kept so that
        the goal image is the render of exactly the state given."""
        self._goal = _as_state(goal, "goal_state")

    def render(self) -> np.ndarray:
        flags = FAST_FLAGS if self.render_quality == "fast" else None
        return self.physics.render(
            self.resolution, self.resolution, camera_id=CAMERA, render_flag_overrides=flags
        )

    def render_goal(self) -> np.ndarray:
        current = self.get_state()
        success = self._success
        self.set_state(self._goal)
        frame = self.render()
        self.set_state(current)
        self._success = success
        return frame

    def close(self) -> None:
        self.physics.free()


class ReacherRandomPolicy:
    """Uniform random torques: what the released ``reacher.h5`` looks like (ENVIRONMENTS.md §3)."""

    def __init__(self, env: ReacherEnv, rng: np.random.Generator) -> None:
        self.rng = rng

    def __call__(self) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=2)


class ReacherOUPolicy:
    """Ornstein–Uhlenbeck torques (a discrete AR(1) process), for wider coverage.

    Independent uniform torques average out within a few steps, so the arm jitters near its
    start and rarely reaches far configurations. Correlated torques keep pushing one way
    for ~1/(1−ρ) steps and sweep the joints through their range; the stationary standard
    deviation stays ``sigma`` per joint.
    """

    def __init__(
        self, env: ReacherEnv, rng: np.random.Generator, rho: float = 0.9, sigma: float = 0.6
    ) -> None:
        self.rng = rng
        self.rho = rho
        self.sigma = sigma
        self.value = rng.normal(0.0, sigma, size=2)

    def __call__(self) -> np.ndarray:
        noise = self.rng.normal(0.0, self.sigma * np.sqrt(1.0 - self.rho**2), size=2)
        self.value = self.rho * self.value + noise
        return np.clip(self.value, -1.0, 1.0)
