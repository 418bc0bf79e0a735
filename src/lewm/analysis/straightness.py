"""Temporal straightening (PROTOCOL.md §7) of a trained run's held-out episodes.

The metric itself is ``lewm.model.diagnostics.straightness``, which training logs as well:
the paper sees it rise during training with no term asking for it.
"""

from __future__ import annotations

import numpy as np

from lewm.analysis.embed import embed_episodes, random_model
from lewm.checkpoint import Checkpoint
from lewm.data import EpisodeStore
from lewm.data.clips import heldout_episodes
from lewm.model.diagnostics import straightness


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
