"""Health checks for a LeWM: repair BatchNorm statistics, and measure embedding collapse."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from lewm.model.lewm import LeWM


def _batchnorms(model: LeWM) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for head in (model.projector, model.pred_proj)
        for m in head.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


@contextlib.contextmanager
def batch_statistics(model: LeWM) -> Iterator[None]:
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


def recalibrate_batchnorm(model: LeWM, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
    """Recompute both projectors' BatchNorm running statistics from training clips.

    With momentum 0.1 the running statistics trail the weights by ~10 steps, which in a short
    run (weights still moving fast) makes eval-mode embeddings noticeably wrong. Here they are
    reset and re-estimated as a plain cumulative average over ``batches`` of (pixels, blocks)
    clips, with dropout off as at eval time. Weights are not touched; the model ends in eval mode.
    """
    norms = _batchnorms(model)
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    device = model.pixel_mean.device
    history = model.cfg.history
    try:
        with torch.no_grad():
            for pixels, blocks in batches:
                z = model.encode(pixels.to(device))
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
