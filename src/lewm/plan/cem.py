"""The Cross-Entropy Method over action sequences, batched over independent problems.

The solver sees only a cost function of candidate sequences, never the world model, so the
same code plans with LeWM, a baseline, or a hand-written cost in the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

CostFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CEM:
    """PROTOCOL.md §2: mean 0, std 1, candidate 0 replaced by the mean, unbiased elite std,
    final plan = the mean; no clipping (the search runs in z-scored action space)."""

    samples: int = 300
    elites: int = 30
    iterations: int = 30

    def __post_init__(self) -> None:
        if not 1 < self.elites <= self.samples:
            raise ValueError(
                f"CEM needs 1 < elites <= samples, got elites={self.elites}, samples={self.samples}"
            )
        if self.iterations < 1:
            raise ValueError(f"CEM needs iterations >= 1, got {self.iterations}")

    def solve(
        self,
        cost_fn: CostFn,
        shape: tuple[int, ...],
        batch: int = 1,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Minimise ``cost_fn``: (batch, samples, *shape) -> (batch, samples).

        Returns the final mean, (batch, *shape)."""
        mean = torch.zeros(batch, *shape, device=device)
        std = torch.ones(batch, *shape, device=device)
        for _ in range(self.iterations):
            noise = torch.randn(
                batch, self.samples, *shape, generator=generator, device=device
            )
            candidates = mean.unsqueeze(1) + std.unsqueeze(1) * noise
            candidates[:, 0] = mean
            cost = cost_fn(candidates)
            if cost.shape != (batch, self.samples):
                raise ValueError(
                    f"cost function returned shape {tuple(cost.shape)}, "
                    f"expected ({batch}, {self.samples})"
                )
            elite_idx = cost.topk(self.elites, dim=1, largest=False).indices
            elite_idx = elite_idx.view(batch, self.elites, *([1] * len(shape))).expand(
                batch, self.elites, *shape
            )
            elites = candidates.gather(1, elite_idx)
            mean = elites.mean(dim=1)
            std = elites.std(dim=1)
        return mean
