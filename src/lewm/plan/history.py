"""The real past a planner may condition on: frames ``frameskip`` steps apart and the raw
actions executed between them (MODEL.md §6, stable-worldmodel's ``history_len``).

One frame says where a body is, not how fast it moves. On tasks with momentum (Reacher's arm
swings on with joint damping 0.01) a plan made from the current frame alone starts from an
unknown velocity; with ``plan.history=h`` the predictor sees the last h-1 real frames too,
with the blocks that were executed between them, exactly as in training.
"""

from __future__ import annotations

from collections import deque

import numpy as np

# (frames (k, H, W, 3), raw actions (k, frameskip, A)): the k past frames, oldest first, and
# for each of them the frameskip actions executed from it on, up to the current frame.
Past = tuple[np.ndarray, np.ndarray]


class FrameHistory:
    """The last ``(history-1)·frameskip`` steps of one episode: call :meth:`observe` with each
    frame and :meth:`act` with each action taken from it; :meth:`past` then gives the frames
    ``frameskip``, ``2·frameskip``, … steps back, as many as the episode has (at most
    ``history-1``)."""

    def __init__(self, history: int, frameskip: int) -> None:
        if history < 1 or frameskip < 1:
            raise ValueError(f"history and frameskip must be >= 1, got {history}, {frameskip}")
        self.frameskip = frameskip
        self.steps = (history - 1) * frameskip
        self.frames: deque[np.ndarray] = deque(maxlen=self.steps + 1)
        self.actions: deque[np.ndarray] = deque(maxlen=self.steps)
        self._awaiting_action = False

    def observe(self, frame: np.ndarray) -> None:
        """A frame observed again before an action replaces the last one: a policy call that
        failed (bad input) took no step."""
        if self._awaiting_action:
            self.frames.pop()
        # A copy: callers render into one buffer step after step (the evaluation does).
        self.frames.append(np.array(frame, copy=True))
        self._awaiting_action = True

    def act(self, action: np.ndarray) -> None:
        if not self._awaiting_action:
            raise ValueError("FrameHistory: an action before the frame it was taken from")
        self.actions.append(np.asarray(action, dtype=np.float32))
        self._awaiting_action = False

    def past(self) -> Past | None:
        """The past of the last observed frame, or None when it has none yet (or history 1)."""
        if not self._awaiting_action:
            raise ValueError("FrameHistory: past() asked after an action, before its frame")
        k = (len(self.frames) - 1) // self.frameskip
        if k == 0:
            return None
        frames = list(self.frames)[-1 - k * self.frameskip : -1 : self.frameskip]
        actions = np.stack(list(self.actions)[len(self.actions) - k * self.frameskip :])
        return np.stack(frames), actions.reshape(k, self.frameskip, -1)
