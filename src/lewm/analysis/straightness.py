"""Temporal straightening (PROTOCOL.md §7): how straight latent trajectories are.

    S = 1/(B(T-2)) Σ_i Σ_t cos(v_t, v_t+1),   v_t = z_t+1 − z_t

1 for motion along a line, about 0 for a random walk. The paper sees it rise during
training with no term asking for it, which is why training logs it too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from lewm.analysis.embed import embed_episodes, heldout_episodes, random_model
from lewm.checkpoint import Checkpoint
from lewm.data import EpisodeStore


def straightness(trajectories: Tensor | Sequence[Tensor]) -> float:
    """Mean cosine between consecutive latent velocities over all trajectories.

    Takes a (B, T, D) tensor or a sequence of (T_i, D) trajectories of different lengths;
    every consecutive velocity pair counts once, so for equal lengths this is exactly the
    formula above. Trajectories with fewer than 3 steps have no pair and are skipped.
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


def run_straightness(
    ckpt: Checkpoint, store: EpisodeStore, max_episodes: int = 0, seed: int = 0
) -> dict:
    """Straightness of held-out episodes under the trained model and a random one.

    The random model of the same architecture stands in for "start of training" when a
    run kept no early checkpoint; the training log's ``val/straightness`` has the curve.
    """
    cfg = ckpt.config
    episodes = heldout_episodes(cfg, store)
    if max_episodes:
        episodes = np.sort(np.random.default_rng(seed).permutation(episodes)[:max_episodes])
    device = ckpt.model.pixel_mean.device
    result: dict = {"env": cfg.env, "data": str(store.path), "episodes": int(episodes.size)}
    for name, model in (("trained", ckpt.model), ("random_init", random_model(ckpt, seed))):
        embedded = embed_episodes(model, store, episodes, ckpt.normalizer, cfg.model.frameskip,
                                  device)
        result[name] = straightness([e.z for e in embedded])
    return result
