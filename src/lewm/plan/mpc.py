"""Model-predictive control: plan in latent space, execute the first blocks, replan.

The planner talks to the world model through three calls (``encode``, ``rollout`` and
``planning_cost``), so every kind of world model plans here unchanged. One call plans for many
environments at once (environments × candidates in one rollout), each with its own noise
generator, so the plans do not depend on how environments are grouped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from lewm.config import PlanConfig
from lewm.data.clips import pixels_tensor
from lewm.data.normalize import Normalizer
from lewm.plan.history import Past
from lewm.plan.solvers import make_solver


class Planned(Protocol):
    """The part of ``lewm.model.protocol.WorldModel`` that planning uses."""

    def encode(self, pixels: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        ...

    def rollout(self, z_ctx: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor: ...

    def planning_cost(self, predicted: torch.Tensor, z_goal: torch.Tensor) -> torch.Tensor: ...


def frames_to_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) frames -> uint8 (N, 1, 3, H, W): one-frame clips for ``encode``."""
    return pixels_tensor(frames)[:, None].to(device)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}

Rollout = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def with_precision(rollout: Rollout, dtype: torch.dtype | None) -> Rollout:
    """The rollout under autocast to ``dtype`` (None: as it is), returning float32 embeddings
    so that costs and CEM's statistics stay in float32. The autocast is inside the function,
    so that ``torch.compile`` traces it as part of the graph."""
    if dtype is None:
        return rollout

    def autocast_rollout(z: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, dtype=dtype):
            return rollout(z, blocks).float()

    return autocast_rollout


def compile_frozen(fn: Rollout) -> Rollout:
    """``torch.compile`` with the weights folded into the graph as constants, so that inductor
    packs them once for its matmuls (MKL's packed GEMM on x86) instead of at every call.

    Planning never changes the weights, but a planner compiled this way keeps the weights it
    first saw. Dynamo decides whether parameters may be frozen while it traces, from the
    global inductor config: ``torch.compile(..., options={"freezing": True})`` alone leaves
    them graph inputs (torch 2.13), so every call, recompiles included, runs under the patch.
    """
    import torch._inductor.config as inductor_config  # 0.7 s to import: only when compiling

    compiled = torch.compile(fn)

    def call(z: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(freezing=True):
            return compiled(z, blocks)

    return call


class MPCPlanner:
    """Plans ``horizon`` action blocks and returns the first ``receding_horizon`` of them as
    raw env actions (inverse z-scored, one row per env step), for a batch of environments.

    A model that reads proprioception is given ``proprio_columns``: every plan then needs
    the raw current and goal proprioception (those columns joined), which it z-scores."""

    def __init__(
        self,
        model: Planned,
        normalizer: Normalizer,
        cfg: PlanConfig,
        frameskip: int,
        action_dim: int,
        device: torch.device,
        proprio_columns: tuple[str, ...] = (),
    ) -> None:
        if not 1 <= cfg.receding_horizon <= cfg.horizon:
            raise ValueError(
                f"plan.receding_horizon must be in [1, plan.horizon={cfg.horizon}], "
                f"got {cfg.receding_horizon}"
            )
        self.model = model
        self.normalizer = normalizer
        self.cfg = cfg
        self.frameskip = frameskip
        self.action_dim = action_dim
        self.device = device
        self.proprio_columns = proprio_columns
        self.solver = make_solver(cfg)
        if cfg.precision not in PRECISIONS:
            raise ValueError(
                f"plan.precision must be one of {sorted(PRECISIONS)}, got {cfg.precision!r}"
            )
        self.rollout = with_precision(model.rollout, PRECISIONS[cfg.precision])
        # The gradient solver differentiates the rollout, so it keeps the eager one.
        self.compiled_rollout = (
            compile_frozen(self.rollout) if cfg.compile and cfg.solver != "gradient" else None
        )
        self.call_seconds: list[float] = []
        self.call_sizes: list[int] = []
        self.compile_seconds = 0.0
        self._compiled_batches: set[tuple[int, ...]] = set()

    def plan(
        self,
        observations: np.ndarray,
        goals: np.ndarray,
        generators: list[torch.Generator],
        previous: torch.Tensor | None = None,
        proprio: tuple[np.ndarray, np.ndarray] | None = None,
        past: Past | None = None,
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Plan for N environments: uint8 (N, H, W, 3) observations and goals, and with
        ``proprio_columns`` their raw proprioception, (N, P) each for now and the goal.
        ``past`` (frames (N, k, H, W, 3), raw actions (N, k, frameskip, A)) are the k real
        frames before the observations, oldest first, with the actions executed since each
        (:class:`~lewm.plan.history.FrameHistory`); the rollout starts from all k+1.

        Returns raw actions (N, receding_horizon·frameskip, action_dim) and the full z-scored
        plans (N, horizon, block_dim), which ``previous`` takes back for a warm start.
        """
        start = time.perf_counter()
        batch = len(observations)
        shape = (self.cfg.horizon, self.frameskip * self.action_dim)
        z_now, z_goal, executed = self._context(observations, goals, proprio, past)
        if self.compiled_rollout is not None and z_now.shape[:2] not in self._compiled_batches:
            start += self._compile(z_now, (z_now.shape[1] - 1 + shape[0], shape[1]))
        cost = self._cost(z_now, z_goal, executed, self.compiled_rollout or self.rollout)
        init = None
        if self.cfg.warm_start and previous is not None:
            done = self.cfg.receding_horizon
            init = torch.cat([previous[:, done:], torch.zeros_like(previous[:, :done])], dim=1)
        plans = self.solver.solve(cost, shape, batch, generators, self.device, init)
        steps = plans[:, : self.cfg.receding_horizon].reshape(batch, -1, self.action_dim)
        actions = self.normalizer.inverse("action", steps.float().cpu().numpy())
        self.call_seconds.append(time.perf_counter() - start)
        self.call_sizes.append(batch)
        return actions.astype(np.float32), plans.detach()

    @torch.no_grad()
    def imagine(
        self,
        observations: np.ndarray,
        goals: np.ndarray,
        plans: torch.Tensor,
        proprio: tuple[np.ndarray, np.ndarray] | None = None,
        past: Past | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the model believes z-scored plans (N, S, horizon, block_dim), S per
        environment, do from the same inputs as :meth:`plan`: the imagined embedding after
        each block (N, S, horizon, D) and the cost the planner gives each plan (N, S), to set
        beside what they do (``lewm plan-gap``)."""
        z_now, z_goal, executed = self._context(observations, goals, proprio, past)
        imagined = self._imagined(z_now, executed, plans.to(self.device), self.rollout)
        return imagined, self._scored(imagined, z_goal)

    def _context(
        self,
        observations: np.ndarray,
        goals: np.ndarray,
        proprio: tuple[np.ndarray, np.ndarray] | None,
        past: Past | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings of the context frames (N, k+1, D) and of the goals (N, D), and the
        executed blocks between the context frames (N, k, block_dim)."""
        p_now, p_goal = self._proprio(proprio)
        clips = frames_to_tensor(observations, self.device)
        executed = torch.zeros(len(observations), 0, self.frameskip * self.action_dim,
                               device=self.device)  # fmt: skip
        if past is not None:
            clips, executed = self._with_past(clips, past)
        with torch.no_grad():
            z_now = self.model.encode(clips, p_now)
            z_goal = self.model.encode(frames_to_tensor(goals, self.device), p_goal)[:, 0]
        return z_now, z_goal, executed

    def _cost(
        self, z_now: torch.Tensor, z_goal: torch.Tensor, executed: torch.Tensor, rollout: Rollout
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Candidates (N, S, horizon, block_dim) → the model's cost of each, (N, S)."""

        def cost(candidates: torch.Tensor) -> torch.Tensor:
            return self._scored(self._imagined(z_now, executed, candidates, rollout), z_goal)

        return cost

    def _scored(self, imagined: torch.Tensor, z_goal: torch.Tensor) -> torch.Tensor:
        """Imagined embeddings (N, S, horizon, D) against the goals (N, D) → costs (N, S)."""
        n, samples = imagined.shape[:2]
        target = z_goal.repeat_interleave(samples, dim=0)
        return self.model.planning_cost(imagined.flatten(0, 1), target).view(n, samples)

    @staticmethod
    def _imagined(
        z_now: torch.Tensor, executed: torch.Tensor, candidates: torch.Tensor, rollout: Rollout
    ) -> torch.Tensor:
        """Candidates (N, S, horizon, block_dim) → imagined embeddings (N, S, horizon, D)."""
        n, samples = candidates.shape[:2]
        blocks = torch.cat([executed[:, None].expand(-1, samples, -1, -1), candidates], 2)
        predicted = rollout(z_now.repeat_interleave(samples, dim=0), blocks.flatten(0, 1))
        return predicted.view(n, samples, *predicted.shape[1:])

    def _with_past(self, clips: torch.Tensor, past: Past) -> tuple[torch.Tensor, torch.Tensor]:
        """The current frames (N, 1, 3, H, W) behind their past ones, and the executed
        actions as z-scored blocks (N, k, frameskip·A), as the training clips hold them."""
        frames, actions = past
        n, k = frames.shape[:2]
        if actions.shape != (n, k, self.frameskip, self.action_dim) or len(clips) != n:
            raise ValueError(
                f"past: {len(clips)} environments need frames (N, k, H, W, 3) and actions "
                f"(N, k, {self.frameskip}, {self.action_dim}), got {frames.shape} and "
                f"{actions.shape}"
            )
        if k + 1 > self.cfg.history:
            raise ValueError(f"past: {k} frames with plan.history={self.cfg.history}")
        earlier = frames_to_tensor(frames.reshape(n * k, *frames.shape[2:]), self.device)
        clips = torch.cat([earlier.view(n, k, *clips.shape[2:]), clips], dim=1)
        blocks = self.normalizer.transform("action", actions).reshape(n, k, -1)
        return clips, torch.from_numpy(np.ascontiguousarray(blocks)).to(self.device)

    def _proprio(
        self, proprio: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Z-scored (N, 1, P) proprioception for ``encode``, or none for a model without."""
        if not self.proprio_columns:
            return None, None
        if proprio is None:
            raise ValueError(
                f"this model reads proprioception ({', '.join(self.proprio_columns)}): plan() "
                "needs proprio=(current, goal)"
            )
        now, goal = (
            torch.from_numpy(self.normalizer.transform(self.proprio_columns, p))[:, None].to(
                self.device
            )
            for p in proprio
        )
        return now, goal

    def _compile(self, z_now: torch.Tensor, shape: tuple[int, int]) -> float:
        """Compile for a new batch size (or context length) before the plan is timed, so that
        plan timings stay comparable; the one-off cost is kept apart in ``compile_seconds``
        and returned. ``shape`` is one candidate's blocks, executed ones included."""
        start = time.perf_counter()
        z = z_now.repeat_interleave(self.cfg.samples, dim=0)
        with torch.no_grad():
            self.compiled_rollout(z, torch.zeros(len(z), *shape, device=self.device))
        self._compiled_batches.add(z_now.shape[:2])
        seconds = time.perf_counter() - start
        self.compile_seconds += seconds
        return seconds


def plan_flops(
    model: Planned, image_size: int, cfg: PlanConfig, block_dim: int, device: torch.device
) -> dict[str, int]:
    """Forward FLOPs of one plan for one environment, counted by torch's FLOP counter
    (matmuls, convolutions, attention): encoding the observation and the goal, then
    ``iterations`` rollouts of ``samples`` candidates with their costs. Counted once on a
    blank frame, since the work does not depend on the pixels; the gradient solver's backward
    passes are not included. With ``plan.history`` h, the full past: h frames encoded and
    h-1 executed blocks before the candidates."""
    from torch.utils.flop_counter import FlopCounterMode

    frames = np.zeros((cfg.history, image_size, image_size, 3), dtype=np.uint8)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        z_now = model.encode(frames_to_tensor(frames, device).transpose(0, 1))
        z_goal = model.encode(frames_to_tensor(frames[:1], device))[:, 0]
    encode = counter.get_total_flops()
    blocks = torch.zeros(cfg.samples, cfg.history - 1 + cfg.horizon, block_dim, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        predicted = model.rollout(z_now.expand(cfg.samples, -1, -1), blocks)
        model.planning_cost(predicted, z_goal.expand(cfg.samples, -1))
    iteration = counter.get_total_flops()
    return {
        "encode": int(encode),
        "iteration": int(iteration),
        "plan": int(encode + cfg.iterations * iteration),
    }

