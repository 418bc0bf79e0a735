"""Health checks for a world model: repair BatchNorm statistics, measure embedding collapse,
and how straight latent trajectories are. Training logs them; analysis reuses them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# A principal direction counts as used when its std is at least this fraction of the unit
# Gaussian's that SIGReg and VICReg's variance hinge aim for.
ACTIVE_STD = 0.1


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) but BatchNorm normalising with each batch's own statistics.

    Mid-training validation uses this: running statistics lag the weights, so eval-mode
    losses there measure the lag, not the model. Momentum 0 keeps the running statistics
    untouched, so validation data never leaks into them.
    """
    norms = _batchnorms(model)
    momenta = [bn.momentum for bn in norms]
    was_training = model.training
    model.eval()
    for bn in norms:
        bn.momentum = 0.0
        bn.train()
    try:
        yield
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
        model.train(was_training)


def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor, Tensor | None]]
) -> None:
    """Recompute every BatchNorm's running statistics (LeWM's and PLDM's two projectors) from
    training clips; a model without BatchNorm is left as it is.

    With momentum 0.1 the running statistics trail the weights by ~10 steps, which in a short
    run (weights still moving fast) makes eval-mode embeddings noticeably wrong. Here they are
    reset and re-estimated as a plain cumulative average over ``batches`` of (pixels, blocks,
    proprio or None) clips, with dropout off as at eval time. Weights are not touched; the
    model ends in eval mode.
    """
    norms = _batchnorms(model)
    if not norms:
        model.eval()
        return
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    device = next(model.parameters()).device
    history = model.cfg.history
    try:
        with torch.no_grad():
            for pixels, blocks, proprio in batches:
                p = None if proprio is None else proprio.to(device)
                z = model.encode(pixels.to(device), p)
                model.predict(z[:, :history], blocks[:, :history].to(device))
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
        model.eval()


def _flat(z: Tensor) -> Tensor:
    return z.detach().float().reshape(-1, z.shape[-1])


def effective_rank(z: Tensor) -> float:
    """exp(entropy) of the normalised singular values of centred (..., D) embeddings (RankMe).

    D for an isotropic cloud, 1 for embeddings on a line: a smooth count of the dimensions the
    model actually uses, which drops well before full collapse shows in the loss.
    """
    x = _flat(z)
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_std(z: Tensor) -> float:
    """Mean per-dim std of (..., D) embeddings: → 0 under collapse, ≈ 1 under SIGReg."""
    return float(_flat(z).std(dim=0).mean())


def active_dims(z: Tensor, floor: float = ACTIVE_STD) -> int:
    """Principal directions of (..., D) embeddings whose std is at least ``floor``.

    Unlike the effective rank, which normalises the spectrum and so reads the same for a
    cloud shrunk a thousandfold, this falls to 0 when embeddings collapse towards a point:
    the no-SIGReg ablation keeps an effective rank near D while every direction dies.
    """
    x = _flat(z)
    if x.shape[0] < 2:
        return 0
    s = torch.linalg.svdvals(x - x.mean(0)) / (x.shape[0] - 1) ** 0.5
    return int((s >= floor).sum())


def straightness(trajectories: Tensor | Sequence[Tensor]) -> float:
    """Mean cosine between consecutive latent velocities over all trajectories
    (PROTOCOL.md §7): 1 for motion along a line, about 0 for a random walk.

    Takes a (B, T, D) tensor or a sequence of (T_i, D) trajectories of different lengths;
    every consecutive velocity pair counts once, so for equal lengths this is exactly
    S = 1/(B(T-2)) Σ_i Σ_t cos(v_t, v_t+1) with v_t = z_t+1 − z_t. Trajectories with fewer
    than 3 steps have no pair and are skipped.
    """
    items = list(trajectories.unbind(0)) if isinstance(trajectories, Tensor) else trajectories
    total, count = 0.0, 0
    for z in items:
        if z.dim() != 2:
            raise ValueError(f"each trajectory must be (T, D), got shape {tuple(z.shape)}")
        if z.shape[0] < 3:
            continue
        v = z[1:].double() - z[:-1].double()
        cos = F.cosine_similarity(v[:-1], v[1:], dim=-1, eps=1e-12)
        total += float(cos.sum())
        count += cos.numel()
    if count == 0:
        raise ValueError("straightness needs at least one trajectory of 3 or more steps")
    return total / count
