"""Re-record the episodes of an existing dataset: its start states, its actions, our renderer.

This is how data from another source (the official PushT expert file, say) becomes a lewm
dataset at any resolution and with lewm's columns: each episode restarts from the file's
first state of that episode and executes the file's actions in order. How closely the
result follows the original depends only on how faithful the simulator is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lewm.data.shards import open_store
from lewm.envs import EnvSpec

PREFIX = "replay:"


def replay_path(policy: str | None) -> Path | None:
    """The dataset named by a ``replay:FILE`` policy, else None."""
    if policy is None or not policy.startswith(PREFIX):
        return None
    path = policy[len(PREFIX) :]
    if not path:
        raise ValueError(f"policy {policy!r}: expected replay:FILE, a dataset to replay")
    return Path(path)


@dataclass(frozen=True)
class ReplayEpisode:
    start: np.ndarray
    goal: np.ndarray
    actions: np.ndarray


class ReplaySource:
    """Episodes of ``path`` as (start state, last state, actions) for ``spec``'s environment."""

    def __init__(self, path: str | os.PathLike[str], spec: EnvSpec) -> None:
        self.store = open_store(path, cache="none")
        self.spec = spec
        spec.require_state_columns(self.store.columns, path)
        if self.store.action_dim != spec.action_dim:
            raise ValueError(
                f"{path}: actions have {self.store.action_dim} dimensions, {spec.name} takes "
                f"{spec.action_dim}"
            )

    def __len__(self) -> int:
        return self.store.num_episodes

    def episode(self, index: int) -> ReplayEpisode:
        rows = self.store.episode_rows(index)
        states = self.spec.read_state(self.store, rows)
        # The last row's action is the NaN that closes every episode: nothing to execute.
        actions = self.store.read("action", rows)[:-1]
        return ReplayEpisode(states[0], states[-1], actions)
