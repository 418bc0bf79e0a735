"""Trajectory optimisers over action sequences, batched over independent problems.

A solver sees only a cost function of candidate sequences, never the world model, so the
same code plans with LeWM, a baseline, or a hand-written cost in the tests. Every solver
draws each problem's noise from that problem's own generator, so planning many
environments in one call gives exactly the plans of planning them one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from lewm.config import PlanConfig

# (batch, candidates, *shape) -> (batch, candidates)
CostFn = Callable[[Tensor], Tensor]
Generators = Sequence[torch.Generator] | None


class Solver(Protocol):
    def solve(
        self,
        cost_fn: CostFn,
        shape: tuple[int, ...],
        batch: int = 1,
        generators: Generators = None,
        device: torch.device | str = "cpu",
        init: Tensor | None = None,
    ) -> Tensor: ...


def noise(
    generators: Generators,
    batch: int,
    samples: int,
    shape: tuple[int, ...],
    device: torch.device | str,
    beta: float = 0.0,
) -> Tensor:
    """Standard normal (batch, samples, *shape), one generator per problem.

    With ``beta > 0`` the noise is coloured along the first (time) axis with a power
    spectrum ∝ 1/f^beta, so consecutive blocks are correlated (iCEM); still unit variance.
    """
    if generators is not None and len(generators) != batch:
        raise ValueError(f"expected {batch} generators (one per problem), got {len(generators)}")
    draws = [
        torch.randn(samples, *shape, generator=None if generators is None else generators[i])
        for i in range(batch)
    ]
    eps = torch.stack(draws).to(device)
    steps = shape[0]
    if beta <= 0 or steps < 2:
        return eps
    freqs = torch.fft.rfftfreq(steps, device=device)
    freqs[0] = freqs[1]
    gain = freqs.pow(-beta / 2)
    # Parseval: each bin but DC (and Nyquist, for even lengths) stands for two in the full
    # spectrum; dividing by the resulting std keeps every entry at unit variance.
    counted = torch.full_like(gain, 2.0)
    counted[0] = 1.0
    if steps % 2 == 0:
        counted[-1] = 1.0
    gain = gain / torch.sqrt((counted * gain**2).sum() / steps)
    scale = gain.view(1, 1, -1, *([1] * (len(shape) - 1)))
    return torch.fft.irfft(torch.fft.rfft(eps, dim=2) * scale, n=steps, dim=2)


def _evaluate(cost_fn: CostFn, candidates: Tensor) -> Tensor:
    cost = cost_fn(candidates)
    if cost.shape != candidates.shape[:2]:
        raise ValueError(
            f"cost function returned shape {tuple(cost.shape)}, "
            f"expected {tuple(candidates.shape[:2])}"
        )
    return cost


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` (batch, k) of each problem's candidates x (batch, n, *shape)."""
    view = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return x.gather(1, view)


def _start(batch: int, shape: tuple[int, ...], device: torch.device | str,
           init: Tensor | None) -> tuple[Tensor, Tensor]:
    mean = torch.zeros(batch, *shape, device=device) if init is None else init.to(device).clone()
    return mean, torch.ones(batch, *shape, device=device)


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

    @torch.no_grad()
    def solve(self, cost_fn: CostFn, shape: tuple[int, ...], batch: int = 1,
              generators: Generators = None, device: torch.device | str = "cpu",
              init: Tensor | None = None) -> Tensor:
        mean, std = _start(batch, shape, device, init)
        for _ in range(self.iterations):
            eps = noise(generators, batch, self.samples, shape, device)
            candidates = mean.unsqueeze(1) + std.unsqueeze(1) * eps
            candidates[:, 0] = mean
            cost = _evaluate(cost_fn, candidates)
            elites = _take(candidates, cost.topk(self.elites, dim=1, largest=False).indices)
            mean, std = elites.mean(dim=1), elites.std(dim=1)
        return mean


@dataclass
class ICEM:
    """Improved CEM (Pinneri et al., 2020): temporally coloured noise, a population that
    shrinks every iteration, a fraction of elites carried over, smoothed updates, and the
    best sequence ever seen as the answer. Reaches CEM's plans with far fewer rollouts."""

    samples: int = 300
    elites: int = 30
    iterations: int = 30
    beta: float = 2.0
    decay: float = 1.25
    keep: float = 0.3
    momentum: float = 0.1

    def __post_init__(self) -> None:
        CEM(self.samples, self.elites, self.iterations)

    @torch.no_grad()
    def solve(self, cost_fn: CostFn, shape: tuple[int, ...], batch: int = 1,
              generators: Generators = None, device: torch.device | str = "cpu",
              init: Tensor | None = None) -> Tensor:
        mean, std = _start(batch, shape, device, init)
        kept = mean.unsqueeze(1)
        best, best_cost = mean, torch.full((batch,), float("inf"), device=device)
        for i in range(self.iterations):
            count = max(2 * self.elites, int(self.samples * self.decay ** (-i)))
            eps = noise(generators, batch, count, shape, device, self.beta)
            candidates = torch.cat([mean.unsqueeze(1) + std.unsqueeze(1) * eps, kept], dim=1)
            cost = _evaluate(cost_fn, candidates)
            order = cost.topk(self.elites, dim=1, largest=False).indices
            elites = _take(candidates, order)
            kept = elites[:, : max(1, int(self.keep * self.elites))]
            improved = cost.gather(1, order[:, :1]).squeeze(1) < best_cost
            best = torch.where(improved.view(-1, *([1] * len(shape))), elites[:, 0], best)
            best_cost = torch.minimum(best_cost, cost.gather(1, order[:, :1]).squeeze(1))
            mean = self.momentum * mean + (1 - self.momentum) * elites.mean(dim=1)
            std = self.momentum * std + (1 - self.momentum) * elites.std(dim=1)
        return best


@dataclass
class MPPI:
    """Model-predictive path integral: every sample votes for the new mean with weight
    exp(−(cost − min)/λ); λ is ``temperature`` times the batch's cost spread, so the update
    does not depend on the scale of the embedding space."""

    samples: int = 300
    iterations: int = 10
    temperature: float = 0.1
    std: float = 1.0

    @torch.no_grad()
    def solve(self, cost_fn: CostFn, shape: tuple[int, ...], batch: int = 1,
              generators: Generators = None, device: torch.device | str = "cpu",
              init: Tensor | None = None) -> Tensor:
        mean, std = _start(batch, shape, device, init)
        std = std * self.std
        for _ in range(self.iterations):
            eps = noise(generators, batch, self.samples, shape, device)
            candidates = mean.unsqueeze(1) + std.unsqueeze(1) * eps
            candidates[:, 0] = mean
            cost = _evaluate(cost_fn, candidates)
            low = cost.min(dim=1, keepdim=True).values
            spread = (cost.median(dim=1, keepdim=True).values - low).clamp_min(1e-9)
            weights = torch.softmax(-(cost - low) / (self.temperature * spread), dim=1)
            w = weights.view(*weights.shape, *([1] * len(shape)))
            mean = (w * candidates).sum(dim=1)
            std = (w * (candidates - mean.unsqueeze(1)) ** 2).sum(dim=1).sqrt().clamp_min(0.05)
        return mean


@dataclass
class GradientDescent:
    """Adam on the action sequence through the differentiable rollout, from ``starts``
    initialisations in parallel (the first is the initial mean); returns the best."""

    starts: int = 16
    iterations: int = 30
    lr: float = 0.1

    def solve(self, cost_fn: CostFn, shape: tuple[int, ...], batch: int = 1,
              generators: Generators = None, device: torch.device | str = "cpu",
              init: Tensor | None = None) -> Tensor:
        mean, _ = _start(batch, shape, device, init)
        actions = mean.unsqueeze(1) + 0.5 * noise(generators, batch, self.starts, shape, device)
        actions[:, 0] = mean
        actions.requires_grad_(True)
        optimiser = torch.optim.Adam([actions], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.iterations):
                cost = _evaluate(cost_fn, actions)
                (grad,) = torch.autograd.grad(cost.sum(), actions)
                optimiser.zero_grad(set_to_none=True)
                actions.grad = grad
                optimiser.step()
        with torch.no_grad():
            final = actions.detach()
            return _take(final, _evaluate(cost_fn, final).argmin(dim=1, keepdim=True))[:, 0]


SOLVER_NAMES = ("cem", "icem", "mppi", "gradient")


def make_solver(cfg: PlanConfig) -> Solver:
    """The solver ``cfg.solver`` with its settings from the plan config."""
    if cfg.solver == "cem":
        return CEM(cfg.samples, cfg.elites, cfg.iterations)
    if cfg.solver == "icem":
        return ICEM(cfg.samples, cfg.elites, cfg.iterations, cfg.icem_beta, cfg.icem_decay)
    if cfg.solver == "mppi":
        return MPPI(cfg.samples, cfg.iterations, cfg.mppi_temperature)
    if cfg.solver == "gradient":
        return GradientDescent(cfg.samples, cfg.iterations, cfg.grad_lr)
    raise ValueError(f"unknown solver {cfg.solver!r}; choose one of: {', '.join(SOLVER_NAMES)}")
