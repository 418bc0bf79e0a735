"""OGBench-Cube (single): a UR5e arm picks and places one cube (ENVIRONMENTS.md §4).

The scene, controller and success test are OGBench's own ``CubeEnv`` in data-collection
mode; this module adds what the LeWM protocol needs around it: a full-state
``set_state``/``get_state`` (qpos then qvel), a goal given as a full state whose cube pose
becomes the target, pixels from the ``front_pixels`` camera, and reproducibility. The
reference wrapper ignores the reset seed and OGBench's oracle draws from NumPy's global
generator, so the same seed gave a different scene and episode; here the scene comes from
the environment's seeded ``np_random`` and the oracle's draws from the policy's generator.

OGBench's ``visualize_info`` (a translucent target cube, recolouring on success) is off:
the goal is an image of a real state, and a marker in every frame would leak the target.
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
    state_vector,
)

CAMERA = "front_pixels"
CUBE_JOINT = "object_joint_0"
SUCCESS_DISTANCE = 0.04
# Per-dimension oracle noise relative to xi (Δxyz, Δyaw, Δgripper), xi ~ U(0, 0.1) per episode.
NOISE_SCALE = np.array([1.0, 1.0, 1.0, 3.0, 10.0])
MAX_NOISE = 0.1
# The explore policy: per oracle step, the chance a random burst starts, and its length range
# (mean 12.5 steps every ~30 oracle steps: ~30% of the steps are random).
BURST_START = 1 / 30
BURST_STEPS = (5, 20)
# The dataset columns of the official cube_single_expert.h5 ('/' written as '_').
INFO_COLUMNS = (
    "proprio/joint_pos", "proprio/effector_pos", "proprio/effector_yaw",
    "proprio/gripper_opening", "proprio/gripper_contact",
    "privileged/block_0_pos", "privileged/block_0_quat",
)


def _ogbench_cube(resolution: int) -> Any:
    """OGBench's environment; the GL backend must be chosen before MuJoCo loads."""
    ensure_gl_backend()
    from ogbench.manipspace.envs.cube_env import CubeEnv as OGBenchCubeEnv

    return OGBenchCubeEnv(
        env_type="single", ob_type="states", mode="data_collection", visualize_info=False,
        terminate_at_goal=True, width=resolution, height=resolution,
    )


def _without_lighting_effects(scene: Any) -> None:
    """render="fast": no shadows or reflections (MuJoCo is loaded by then)."""
    import mujoco

    scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0


class CubeEnv(gymnasium.Env):
    """One cube to bring within 4 cm of a target position; orientation is not scored."""

    # One step is OGBench's 0.05 s control step.
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self, resolution: int = 64, render: str = "faithful", render_mode: str | None = "rgb_array"
    ) -> None:
        self.resolution = check_resolution(resolution)
        self.render_quality = check_render(render)
        self.render_mode = check_render_mode(render_mode)
        self.inner = _ogbench_cube(self.resolution)
        self.inner.reset(seed=0)
        if self.render_quality == "fast":
            # Read when OGBench makes its renderer, at the first render (the model is
            # compiled once, by the reset above).
            self.inner.model.vis.quality.offsamples = 0
        model = self.inner.model
        self._nq, self._nv = model.nq, model.nv
        adr = model.jnt_qposadr[model.joint(CUBE_JOINT).id]
        self._cube_qpos = slice(adr, adr + 7)
        self._target_mocap = self.inner._cube_target_mocap_ids[0]
        self.action_space = spaces.Box(-1.0, 1.0, shape=(5,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(28,), dtype=np.float32)
        self._goal = self.get_state()
        self._refresh()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """OGBench's data-collection scene (random arm pose, cube and target), drawn from
        ``seed``; ``options`` then override the start and/or the goal."""
        super().reset(seed=seed)
        options = reset_options(options)
        seed_seq = int(self.np_random.integers(2**31))
        self.inner.reset(seed=seed_seq)
        self._goal_from_target()
        if options.get("state") is not None:
            self.set_state(options["state"])
        if options.get("goal_state") is not None:
            self.set_goal_state(options["goal_state"])
        return self._refresh()

    def new_target(self) -> None:
        """OGBench's next data-collection target (drawn from the seeded scene generator)."""
        self.inner.set_new_target(return_info=False)
        self._goal_from_target()
        self._refresh()

    def _goal_from_target(self) -> None:
        """A goal state for the current target: this state with the cube on the target."""
        data = self.inner.data
        self._goal = self.get_state()
        self._goal[self._cube_qpos] = np.concatenate(
            [data.mocap_pos[self._target_mocap], data.mocap_quat[self._target_mocap]]
        )

    def _refresh(self) -> tuple[np.ndarray, dict[str, Any]]:
        return self._remember(self.inner.compute_observation(), self.inner.get_reset_info())

    def _remember(self, ob: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """The oracle policy acts on the latest observation and info, as OGBench's does."""
        self.last_observation, self.last_info = ob, info
        return ob.astype(np.float32), self._info(info)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.float64).reshape(5)
        ob, reward, terminated, truncated, info = self.inner.step(a)
        ob, info = self._remember(ob, info)
        return ob, float(reward), bool(info["success"]), False, info

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        data = self.inner.data
        out = {key.replace("/", "_"): np.asarray(info[key]).copy() for key in INFO_COLUMNS}
        out.update(
            qpos=data.qpos.copy(),
            qvel=data.qvel.copy(),
            observation=self.last_observation.astype(np.float32),
            success=self.is_success(),
        )
        return out

    def is_success(self) -> bool:
        cube = self.inner.data.qpos[self._cube_qpos][:3]
        target = self.inner.data.mocap_pos[self._target_mocap]
        return bool(np.linalg.norm(cube - target) <= SUCCESS_DISTANCE)

    def get_state(self) -> np.ndarray:
        data = self.inner.data
        return np.concatenate([data.qpos, data.qvel])

    def set_state(self, state: Any) -> None:
        s = self._as_state(state, "state")
        self.inner.set_state(s[: self._nq], s[self._nq :])
        self.inner.post_step()
        self._refresh()

    def get_goal_state(self) -> np.ndarray:
        return self._goal.copy()

    def set_goal_state(self, goal: Any) -> None:
        """The target becomes the goal state's cube pose (``set_target_pos`` in the reference)."""
        self._goal = self._as_state(goal, "goal_state")
        data = self.inner.data
        data.mocap_pos[self._target_mocap] = self._goal[self._cube_qpos][:3]
        data.mocap_quat[self._target_mocap] = self._goal[self._cube_qpos][3:]
        self.inner.post_step()

    def _as_state(self, value: Any, name: str) -> np.ndarray:
        return state_vector(
            value, name, self._nq + self._nv, f"qpos {self._nq} then qvel {self._nv}"
        )

    def render(self) -> np.ndarray:
        if self.render_quality == "fast":
            return self.inner.render(camera=CAMERA, scene_callback=_without_lighting_effects)
        return self.inner.render(camera=CAMERA)

    def render_goal(self) -> np.ndarray:
        current = self.get_state()
        self.set_state(self._goal)
        frame = self.render()
        self.set_state(current)
        return frame

    def close(self) -> None:
        renderer = getattr(self.inner, "_renderer", None)
        if renderer is not None:
            renderer.close()
            self.inner._renderer = None


class CubeOraclePolicy:
    """OGBench's ``CubeMarkovOracle(min_norm=0.4)`` with the paper's per-episode noise.

    Once the oracle has placed the cube it asks the environment for a new target, so one
    episode chains several pick-and-place tasks. The oracle's own random final pose comes
    from NumPy's global generator; it is redrawn here from ``rng`` so episodes repeat.
    """

    def __init__(self, env: CubeEnv, rng: np.random.Generator) -> None:
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle

        self.env = env
        self.rng = rng
        self.noise = rng.uniform(0.0, MAX_NOISE) * NOISE_SCALE
        self.oracle = CubeMarkovOracle(env=env.inner, min_norm=0.4)
        self._restart_oracle()

    def _restart_oracle(self) -> None:
        self.oracle.reset(self.env.last_observation, self.env.last_info)
        bounds = self.env.inner._arm_sampling_bounds
        self.oracle._final_pos = self.rng.uniform(*bounds)
        self.oracle._final_yaw = self.rng.uniform(-np.pi, np.pi)

    def __call__(self) -> np.ndarray:
        if self.oracle.done:
            self.env.new_target()
            self._restart_oracle()
        action = self.oracle.select_action(self.env.last_observation, self.env.last_info)
        action = action + self.rng.normal(0.0, self.noise)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


class CubeExplorePolicy(CubeOraclePolicy):
    """The oracle, interrupted by bursts of uniform random actions (~30% of the steps).

    A planner scores white-noise action blocks the oracle never takes, and a model trained
    on oracle data alone is wrong about them (``lewm plan-gap``: its error on CEM's plans
    grows five times faster than on the data's actions). The bursts show the model what
    such actions do near the cube and the oracle's recoveries from them; the oracle is
    Markov (it acts on the current state), so it resumes its task after a burst.
    """

    def __init__(self, env: CubeEnv, rng: np.random.Generator) -> None:
        super().__init__(env, rng)
        self.burst_left = 0

    def __call__(self) -> np.ndarray:
        if self.burst_left == 0 and self.rng.random() < BURST_START:
            self.burst_left = int(self.rng.integers(BURST_STEPS[0], BURST_STEPS[1] + 1))
        if self.burst_left > 0:
            self.burst_left -= 1
            return self.rng.uniform(-1.0, 1.0, size=5).astype(np.float32)
        return super().__call__()
