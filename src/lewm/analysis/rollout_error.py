"""Imagined rollouts: open-loop latent prediction error against the horizon.

From every position of a held-out episode the model gets ``history`` real embeddings and
then only the dataset's action blocks, and imagines the next H embeddings. Its error at
horizon k sits next to copying the last real embedding, the baseline a model that ignores
actions would match, so the gap is what the model knows about the effect of actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lewm.analysis.embed import EmbeddedEpisode, embed_episodes
from lewm.checkpoint import Checkpoint
from lewm.data import EpisodeStore
from lewm.data.clips import heldout_episodes


@torch.inference_mode()
def rollout_errors(
    model: Any,
    episodes: Sequence[EmbeddedEpisode],
    history: int,
    horizon: int,
    batch: int = 1024,
) -> dict:
    """Per-horizon MSE (mean over starts and embedding dims) of ``model.rollout`` and of
    copy-last, on the same starts: every position with ``horizon`` real frames after it."""
    if horizon < 1 or history < 1:
        raise ValueError(f"horizon and history must be >= 1, got {horizon} and {history}")
    ctx, blocks, targets = [], [], []
    for e in episodes:
        for t in range(history - 1, e.z.shape[0] - 1 - horizon + 1):
            ctx.append(e.z[t - history + 1 : t + 1])
            blocks.append(e.blocks[t - history + 1 : t + horizon])
            targets.append(e.z[t + 1 : t + 1 + horizon])
    if not ctx:
        raise ValueError(
            f"no episode has {history + horizon} frames (history + horizon) at the model's "
            "frameskip; lower --horizon"
        )
    z_ctx, b, target = torch.stack(ctx), torch.stack(blocks), torch.stack(targets)
    device = model.pixel_mean.device if hasattr(model, "pixel_mean") else "cpu"
    pred = torch.cat([
        model.rollout(z_ctx[i : i + batch].to(device), b[i : i + batch].to(device)).float().cpu()
        for i in range(0, z_ctx.shape[0], batch)
    ])
    copy = z_ctx[:, -1:].expand_as(target)
    return {
        "horizons": list(range(1, horizon + 1)),
        "model": ((pred - target) ** 2).mean(dim=(0, 2)).tolist(),
        "copy_last": ((copy - target) ** 2).mean(dim=(0, 2)).tolist(),
        "starts": int(z_ctx.shape[0]),
    }


def run_rollout_error(
    ckpt: Checkpoint,
    store: EpisodeStore,
    horizon: int = 5,
    max_episodes: int = 0,
    seed: int = 0,
) -> dict:
    """Rollout error vs horizon on the run's held-out episodes."""
    cfg = ckpt.config
    episodes = heldout_episodes(cfg, store)
    if max_episodes:
        episodes = np.sort(np.random.default_rng(seed).permutation(episodes)[:max_episodes])
    embedded = embed_episodes(ckpt.model, store, episodes, ckpt.normalizer, cfg.model.frameskip,
                              ckpt.model.pixel_mean.device)
    result = rollout_errors(ckpt.model, embedded, cfg.model.history, horizon)
    return {"env": cfg.env, "data": str(store.path), "episodes": int(episodes.size), **result}
