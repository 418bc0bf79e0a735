"""Model-predictive control: plan in latent space, execute the first blocks, replan.

The planner talks to the world model through three calls only (``encode``, ``rollout`` and
the goal cost), so any model with that protocol plans here unchanged.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
import torch

from lewm.config import PlanConfig
from lewm.data.normalize import Normalizer
from lewm.plan.cem import CEM


class WorldModel(Protocol):
    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def rollout(self, z_ctx: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor: ...


def goal_cost(predicted: torch.Tensor, z_goal: torch.Tensor) -> torch.Tensor:
    """MODEL.md §6: squared distance of the last predicted embedding to the goal embedding."""
    return ((predicted[..., -1, :] - z_goal) ** 2).sum(dim=-1)


def pixels_to_tensor(frame: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 H×W×3 frame -> uint8 (1, 1, 3, H, W) tensor, the layout ``encode`` takes."""
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None, None].to(device)


class MPCPlanner:
    """Plans ``horizon`` action blocks with CEM and returns the first ``receding_horizon``
    of them as raw env actions (inverse z-scored, one row per env step)."""

    def __init__(
        self,
        model: WorldModel,
        normalizer: Normalizer,
        cfg: PlanConfig,
        frameskip: int,
        action_dim: int,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        if cfg.solver != "cem":
            raise ValueError(f"unknown solver {cfg.solver!r}; available: cem")
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
        self.solver = CEM(cfg.samples, cfg.elites, cfg.iterations)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.plan_seconds: list[float] = []

    @torch.inference_mode()
    def plan(self, observation: np.ndarray, goal: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        z_now = self.model.encode(pixels_to_tensor(observation, self.device))[:, 0]
        z_goal = self.model.encode(pixels_to_tensor(goal, self.device))[:, 0]

        def cost(candidates: torch.Tensor) -> torch.Tensor:
            batch, samples = candidates.shape[:2]
            flat = candidates.flatten(0, 1)
            z_ctx = z_now.repeat_interleave(samples, dim=0).unsqueeze(1)
            predicted = self.model.rollout(z_ctx, flat)
            return goal_cost(predicted, z_goal.repeat_interleave(samples, dim=0)).view(
                batch, samples
            )

        block_dim = self.frameskip * self.action_dim
        best = self.solver.solve(
            cost, (self.cfg.horizon, block_dim), generator=self.generator, device=self.device
        )[0]
        steps = best[: self.cfg.receding_horizon].reshape(-1, self.action_dim)
        actions = self.normalizer.inverse("action", steps.float().cpu().numpy())
        self.plan_seconds.append(time.perf_counter() - start)
        return actions.astype(np.float32)
