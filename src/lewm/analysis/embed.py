"""Held-out episodes as the model sees them: one frame every ``frameskip`` rows.

Probing, straightness and rollout error all need the same thing, a held-out episode
embedded at the model's own time step with the action blocks between its frames, so it
is computed here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lewm.checkpoint import Checkpoint
from lewm.data import EpisodeStore, Normalizer, pixels_tensor
from lewm.data.clips import frame_rows
from lewm.model.protocol import model_device
from lewm.registry import build_model


@dataclass
class EmbeddedEpisode:
    """One episode at model time steps.

    ``rows`` are the global rows of the n frames, ``z`` their embeddings (n, D) and
    ``blocks`` the n-1 normalized action blocks (n-1, block_dim): block k holds the
    ``frameskip`` actions that lead from frame k to frame k+1.
    """

    episode: int
    rows: np.ndarray
    z: Tensor
    blocks: Tensor


def action_blocks(
    store: EpisodeStore, rows: np.ndarray, frameskip: int, normalizer: Normalizer
) -> np.ndarray:
    """Normalized blocks between consecutive frame rows, as ``ClipDataset`` builds them."""
    if rows.size < 2:
        return np.zeros((0, frameskip * store.action_dim), dtype=np.float32)
    raw = store.read("action", slice(int(rows[0]), int(rows[-1])))
    return normalizer.transform("action", raw).reshape(rows.size - 1, -1).astype(np.float32)


@torch.inference_mode()
def embed_episodes(
    model: torch.nn.Module,
    store: EpisodeStore,
    episodes: np.ndarray,
    normalizer: Normalizer,
    frameskip: int,
    device: torch.device | str = "cpu",
    batch_frames: int = 512,
) -> list[EmbeddedEpisode]:
    """Embed whole episodes with ``model.encode`` in batches of about ``batch_frames``.

    ``model`` only needs ``encode``; it is used as it is (a loaded checkpoint is in eval
    mode), so BatchNorm uses its running statistics as planning does.
    """
    per_episode = [frame_rows(store, int(e), frameskip) for e in episodes]
    all_rows = np.concatenate(per_episode) if per_episode else np.zeros(0, dtype=np.int64)
    chunks = []
    for start in range(0, all_rows.size, batch_frames):
        frames = store.read("pixels", all_rows[start : start + batch_frames])
        chunks.append(model.encode(pixels_tensor(frames).to(device)).float().cpu())
    z_all = torch.cat(chunks) if chunks else torch.zeros(0)
    out, at = [], 0
    for episode, rows in zip(episodes, per_episode, strict=True):
        blocks = action_blocks(store, rows, frameskip, normalizer)
        z = z_all[at : at + rows.size]
        out.append(EmbeddedEpisode(int(episode), rows, z, torch.from_numpy(blocks)))
        at += rows.size
    return out


def random_model(ckpt: Checkpoint, seed: int) -> torch.nn.Module:
    """A freshly initialised model of the checkpoint's kind and architecture, in eval mode:
    the "before training" reference for probes and straightness. Frozen parts (DINO-WM's
    encoder) are taken from the checkpoint, since training started from them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(ckpt.config.model)
    frozen = {k: v for k, v in ckpt.model.named_parameters() if not v.requires_grad}
    model.load_state_dict(frozen, strict=False)
    return model.to(model_device(ckpt.model)).eval()
