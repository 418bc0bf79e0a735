"""The environments behind one goal-conditioned protocol, looked up by name.

Collection, planning and evaluation only ever see an :class:`EnvSpec`, so adding an
environment means adding a module and one registry entry, never a branch on its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np

from lewm.envs.pusht import PushTEnv, PushTWeakPolicy
from lewm.envs.tworoom import TwoRoomEnv, TwoRoomPolicy

__all__ = [
    "ENV_NAMES",
    "EnvSpec",
    "PushTEnv",
    "PushTWeakPolicy",
    "TwoRoomEnv",
    "TwoRoomPolicy",
    "UnknownEnvError",
    "get_env_spec",
    "make_env",
]


class UnknownEnvError(ValueError):
    """An environment name that is not in the registry."""


@dataclass(frozen=True)
class EnvSpec:
    """What the collector and the planner need to know about an environment.

    ``state_key`` names the info entry (and dataset column) that ``set_state`` accepts, so
    an evaluation can restore a dataset row without knowing the environment. ``info_keys``
    are the info entries the collector stores per step as dataset columns.
    """

    name: str
    make: Callable[[int], gymnasium.Env]
    make_policy: Callable[[Any, np.random.Generator], Callable[[], np.ndarray]]
    max_steps: int
    frameskip: int
    action_dim: int
    state_key: str
    info_keys: tuple[str, ...]


_SPECS: dict[str, EnvSpec] = {
    "tworoom": EnvSpec(
        name="tworoom",
        make=TwoRoomEnv,
        make_policy=TwoRoomPolicy,
        max_steps=100,
        frameskip=5,
        action_dim=2,
        state_key="proprio",
        info_keys=("proprio", "state", "goal_state"),
    ),
    # Paper data: episodes of mean length 196 and 5-step action blocks (ENVIRONMENTS.md §5).
    "pusht": EnvSpec(
        name="pusht",
        make=PushTEnv,
        make_policy=PushTWeakPolicy,
        max_steps=200,
        frameskip=5,
        action_dim=2,
        state_key="state",
        info_keys=("proprio", "state", "goal_state"),
    ),
}

ENV_NAMES: tuple[str, ...] = tuple(_SPECS)


def get_env_spec(name: str) -> EnvSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise UnknownEnvError(
            f"unknown environment {name!r}; choose one of: {', '.join(ENV_NAMES)}"
        ) from None


def make_env(name: str, resolution: int) -> gymnasium.Env:
    return get_env_spec(name).make(resolution)
