"""A trained run as a policy for any gymnasium loop: two frames in, one raw action out.

``lewm eval`` drives environments itself, in lockstep batches over dataset start states. A
user's own loop (their environment, their goals, their wrappers) only needs a callable that
turns the current frame and a goal frame into the next action; :class:`Policy` is that
callable, built on the same :class:`~lewm.plan.mpc.MPCPlanner` with receding-horizon
replanning, so it acts exactly as the evaluation's planner does for one environment.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lewm.checkpoint import load_checkpoint
from lewm.config import RunConfig, apply_overrides
from lewm.device import resolve_device
from lewm.envs import proprio_columns
from lewm.plan.history import FrameHistory
from lewm.plan.mpc import MPCPlanner


def plan_override(item: str) -> str:
    """``samples=100`` → ``plan.samples=100``. A policy only plans, so an override of any
    other section (the model, training, evaluation) is refused: it could not take effect,
    or would no longer match the weights."""
    key = item.split("=", 1)[0].strip()
    if key.startswith("plan."):
        return item
    if "." in key:
        raise ValueError(
            f"override {item!r}: a policy takes plan settings only (plan.KEY=VALUE or KEY=VALUE)"
        )
    return f"plan.{item}"


class Policy:
    """Plans on the first call, hands out the plan's actions one per call and replans when
    they are used up (every ``plan.receding_horizon`` blocks of ``frameskip`` steps).

    Frames are uint8 (H, W, 3) at the model's training resolution, e.g. ``env.render()``:
    the world model sees pixels, not the environment's state vector. The noise of every plan
    comes from one generator seeded with ``seed``, so the same seed and the same frames give
    the same actions. Call :meth:`reset` at the start of each episode.
    """

    def __init__(self, planner: MPCPlanner, config: RunConfig, seed: int = 0) -> None:
        self.planner = planner
        self.config = config
        self.image_size = config.model.image_size
        self.generator = torch.Generator()
        self._queue: deque[np.ndarray] = deque()
        self._previous: torch.Tensor | None = None
        self._history: FrameHistory  # reset() makes it, as at every episode's start
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Forget the queued actions and the last plan (a new episode starts from a new
        plan, not from a warm start on the old one); with ``seed``, reseed the noise too."""
        self._queue.clear()
        self._previous = None
        self._history = FrameHistory(self.config.plan.history, self.config.model.frameskip)
        if seed is not None:
            self.generator.manual_seed(seed)

    def __call__(
        self,
        observation: np.ndarray,
        goal: np.ndarray,
        proprio: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """The next raw env action, float32 (action_dim,).

        ``proprio`` is the raw (current, goal) proprioception, needed by a model that reads
        it (``model.uses_proprio``) and ignored otherwise, so one loop can drive either kind;
        like the frames, it is read only when a new plan is made. With ``plan.history`` > 1
        every frame of the episode is kept as the planner's real past, so call it at every
        step, with the frame the returned action is taken from.
        """
        frame = self._frame(observation, "observation")
        self._history.observe(frame)
        if not self._queue:
            self._replan(frame, goal, proprio)
        action = self._queue.popleft()
        self._history.act(action)
        return action

    def _replan(
        self,
        frame: np.ndarray,
        goal: np.ndarray,
        proprio: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        """``frame`` is the observation, already checked."""
        now = frame[None]
        target = self._frame(goal, "goal")[None]
        if proprio is not None and self.planner.proprio_columns:
            proprio = self._proprio(proprio)
        past = self._history.past()
        if past is not None:
            past = (past[0][None], past[1][None])
        actions, plans = self.planner.plan(
            now, target, [self.generator], self._previous, proprio, past
        )
        self._previous = plans
        self._queue.extend(np.array(row, dtype=np.float32) for row in actions[0])

    def _frame(self, frame: Any, name: str) -> np.ndarray:
        """A frame the encoder can take, or an error that says what the model expects: a
        frame of another size would otherwise fail deep inside the encoder."""
        array = np.asarray(frame)
        expected = (self.image_size, self.image_size, 3)
        if array.shape != expected or array.dtype != np.uint8:
            raise ValueError(
                f"{name} frame: expected uint8 {expected} (the model was trained on "
                f"{self.image_size}x{self.image_size} images; make the environment with "
                f"resolution={self.image_size}), got {array.dtype} {array.shape}"
            )
        return array

    def _proprio(self, proprio: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The raw (current, goal) vectors as the planner's batch of one, (1, P) each."""
        width = self.config.model.proprio_dim
        try:
            now, goal = (np.asarray(p, dtype=np.float32) for p in proprio)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"proprio must be a (current, goal) pair of {width}-vectors, got {proprio!r}"
            ) from err
        for name, vector in (("current", now), ("goal", goal)):
            if vector.shape != (width,):
                raise ValueError(
                    f"proprio ({name}): expected {width} values, got shape {vector.shape}"
                )
        return now[None], goal[None]


def load_policy(
    run_dir: str | Path,
    device: str = "auto",
    seed: int = 0,
    overrides: list[str] | None = None,
) -> Policy:
    """A run's checkpoint as a :class:`Policy` that plans with the run's ``plan`` settings,
    changed by ``overrides`` (``plan.samples=100`` or just ``samples=100``)."""
    torch_device = resolve_device(device)
    ckpt = load_checkpoint(run_dir, torch_device)
    cfg = apply_overrides(ckpt.config, [plan_override(o) for o in overrides or []])
    m = cfg.model
    planner = MPCPlanner(
        ckpt.model, ckpt.normalizer, cfg.plan, m.frameskip, m.action_dim, torch_device,
        proprio_columns(cfg),
    )  # fmt: skip
    return Policy(planner, cfg, seed)
