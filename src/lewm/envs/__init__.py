"""The environments behind one goal-conditioned protocol, looked up by name.

Collection, planning and evaluation only ever see an :class:`EnvSpec`, so adding an
environment means adding a module and one registry entry, never a branch on its name.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np

from lewm.envs.cube import CubeEnv, CubeExplorePolicy, CubeOraclePolicy
from lewm.envs.pusht import PushTEnv, PushTWeakPolicy
from lewm.envs.pusht_pusher import PushTPusherPolicy
from lewm.envs.reacher import ReacherEnv, ReacherOUPolicy, ReacherRandomPolicy
from lewm.envs.registration import register_envs
from lewm.envs.tworoom import TwoRoomEnv, TwoRoomPolicy

if TYPE_CHECKING:  # the run config only types a parameter here
    from lewm.config import RunConfig

__all__ = [
    "ENV_NAMES",
    "CubeEnv",
    "CubeExplorePolicy",
    "CubeOraclePolicy",
    "EnvSpec",
    "PushTEnv",
    "PushTPusherPolicy",
    "PushTWeakPolicy",
    "ReacherEnv",
    "ReacherOUPolicy",
    "ReacherRandomPolicy",
    "TwoRoomEnv",
    "TwoRoomPolicy",
    "UnknownEnvError",
    "get_env_spec",
    "make_env",
    "proprio_columns",
]


PolicyFactory = Callable[[Any, np.random.Generator], Callable[[], np.ndarray]]


class UnknownEnvError(ValueError):
    """An environment name that is not in the registry."""


@dataclass(frozen=True)
class EnvSpec:
    """What the collector and the planner need to know about an environment.

    ``state_keys`` name the info entries (and dataset columns) whose concatenation
    ``set_state`` accepts, so an evaluation can restore a dataset row without knowing the
    environment; several keys let the official files (separate ``qpos`` and ``qvel``
    columns) be restored as they are. ``info_keys`` are the info entries the collector
    stores per step as dataset columns. ``proprio_keys`` are the info entries (and
    columns) that a model reading proprioception gets, joined in order: the agent's own
    state, as the paper's baselines load it (BASELINES.md §3). ``policies`` maps
    data-collection policy names to their factories; the first is the default.
    ``episode_ends_at_success`` is false where the paper's data runs a fixed length whatever
    happens (Reacher's random torques, the Cube oracle chaining tasks).
    """

    name: str
    make: Callable[..., gymnasium.Env]
    policies: Mapping[str, PolicyFactory]
    max_steps: int
    frameskip: int
    action_dim: int
    state_keys: tuple[str, ...]
    info_keys: tuple[str, ...]
    proprio_keys: tuple[str, ...] = ()
    episode_ends_at_success: bool = True

    @property
    def default_policy(self) -> str:
        return next(iter(self.policies))

    def policy_factory(self, name: str | None = None) -> PolicyFactory:
        name = name or self.default_policy
        if name not in self.policies:
            raise ValueError(
                f"environment {self.name!r} has no policy {name!r}; choose one of: "
                f"{', '.join(self.policies)}, or replay:FILE"
            )
        return self.policies[name]

    def make_policy(
        self, env: Any, rng: np.random.Generator, name: str | None = None
    ) -> Callable[[], np.ndarray]:
        return self.policy_factory(name)(env, rng)

    def require_state_columns(self, columns: Collection[str], source: object) -> None:
        """Fail before any work when ``source`` (a file, an info dict) lacks a column that
        ``set_state`` needs."""
        missing = [k for k in self.state_keys if k not in columns]
        if missing:
            raise ValueError(
                f"{source}: {self.name} needs column(s) {', '.join(missing)} to restore its "
                f"state; there are {', '.join(columns)}"
            )

    def state_of(self, columns: Mapping[str, Any]) -> np.ndarray:
        """The ``set_state`` vector(s) from info entries or dataset columns (last axis)."""
        self.require_state_columns(columns, f"{self.name} state")
        return np.concatenate([np.atleast_1d(columns[k]) for k in self.state_keys], axis=-1)

    def read_state(self, store: Any, rows: Any) -> np.ndarray:
        """The ``set_state`` vectors of dataset ``rows`` of an EpisodeStore.

        NaN or inf there is refused naming the file, column, episode and step; the
        environment would only reject (or, worse, accept) the state vector it makes.
        """
        store.require_finite(self.state_keys, rows)
        return self.state_of({k: store.read(k, rows) for k in self.state_keys})


_SPECS: dict[str, EnvSpec] = {
    "tworoom": EnvSpec(
        name="tworoom",
        make=TwoRoomEnv,
        policies={"heuristic": TwoRoomPolicy},
        max_steps=100,
        frameskip=5,
        action_dim=2,
        state_keys=("proprio",),
        info_keys=("proprio", "state", "goal_state"),
        proprio_keys=("proprio",),
    ),
    # Paper data: episodes of mean length 196 and 5-step action blocks (ENVIRONMENTS.md §5).
    "pusht": EnvSpec(
        name="pusht",
        make=PushTEnv,
        policies={"weak": PushTWeakPolicy, "pusher": PushTPusherPolicy},
        max_steps=200,
        frameskip=5,
        action_dim=2,
        state_keys=("state",),
        info_keys=("proprio", "state", "goal_state"),
        proprio_keys=("proprio",),
    ),
    # The released reacher.h5: uniform random torques, 200 steps; qpos/qvel restore a row.
    "reacher": EnvSpec(
        name="reacher",
        make=ReacherEnv,
        policies={"random": ReacherRandomPolicy, "ou": ReacherOUPolicy},
        max_steps=200,
        frameskip=5,
        action_dim=2,
        state_keys=("qpos", "qvel"),
        info_keys=("qpos", "qvel", "observation", "target_pos", "finger_pos"),
        proprio_keys=("observation",),
        episode_ends_at_success=False,
    ),
    # cube_single_expert.h5: noisy oracle, 200 steps (201 rows), blocks of 5 x 5 actions.
    "cube": EnvSpec(
        name="cube",
        make=CubeEnv,
        policies={"oracle": CubeOraclePolicy, "explore": CubeExplorePolicy},
        max_steps=200,
        frameskip=5,
        action_dim=5,
        state_keys=("qpos", "qvel"),
        info_keys=(
            "qpos", "qvel", "observation", "proprio_joint_pos", "proprio_effector_pos",
            "proprio_effector_yaw", "proprio_gripper_opening", "proprio_gripper_contact",
            "privileged_block_0_pos", "privileged_block_0_quat",
        ),
        proprio_keys=(
            "proprio_joint_pos", "proprio_effector_pos", "proprio_effector_yaw",
            "proprio_gripper_opening", "proprio_gripper_contact",
        ),
        episode_ends_at_success=False,
    ),
}

ENV_NAMES: tuple[str, ...] = tuple(_SPECS)


def proprio_columns(cfg: RunConfig) -> tuple[str, ...]:
    """The columns a run's model reads as proprioception: none unless its kind uses it."""
    return get_env_spec(cfg.env).proprio_keys if cfg.model.uses_proprio else ()


def get_env_spec(name: str) -> EnvSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise UnknownEnvError(
            f"unknown environment {name!r}; choose one of: {', '.join(ENV_NAMES)}"
        ) from None


def make_env(name: str, resolution: int, render: str = "faithful") -> gymnasium.Env:
    return get_env_spec(name).make(resolution, render=render)


register_envs()
