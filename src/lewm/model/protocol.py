"""What planners, training and analysis need of a world model, and nothing more.

LeWM and the baselines (``lewm.baselines``) all satisfy it, and ``lewm.registry`` builds
them from ``model.kind``; shared code never asks which kind it holds. Latents are vectors:
a model whose latent is a grid of patch tokens (DINO-WM) flattens it, so the same analysis
and planning code reads every kind.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class WorldModel(Protocol):
    cfg: Any

    def encode(self, pixels: Tensor, proprio: Tensor | None = None) -> Tensor:
        """Frames (..., 3, H, W), uint8 or float in [0, 1], with their z-scored
        proprioception (..., P) when ``cfg.uses_proprio`` → latents (..., D). A model that
        does not use proprioception ignores it."""
        ...

    def predict(self, z: Tensor, blocks: Tensor) -> Tensor:
        """Teacher-forced: latents (B, T ≤ history, D) and their action blocks → (B, T, D),
        output t predicting latent t+1."""
        ...

    def rollout(self, z_ctx: Tensor, blocks: Tensor) -> Tensor:
        """Open loop from h real latents with h-1 executed then H candidate blocks → (B, H, D)."""
        ...

    def planning_cost(self, predicted: Tensor, z_goal: Tensor) -> Tensor:
        """Cost (B,) of imagined latents (B, H, D) against goal latents (B, D)."""
        ...

    def loss(
        self,
        pixels: Tensor,
        blocks: Tensor,
        generator: torch.Generator | None = None,
        proprio: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The training objective on clips: ``loss`` (what is minimised), ``pred_loss``, every
        other named term as a scalar, and ``z`` (the detached latents)."""
        ...

    def param_counts(self) -> dict[str, int]:
        """Parameters per part, with ``total`` and ``trainable``."""
        ...


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights live (every kind has some)."""
    return next(model.parameters()).device


def count_parameters(model: torch.nn.Module, parts: tuple[str, ...]) -> dict[str, int]:
    """``param_counts`` for a model whose parts are its named submodules."""
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in parts}
    counts["total"] = sum(p.numel() for p in model.parameters())
    counts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return counts
