"""Training clips: n frames f env steps apart with the f actions between each pair
(DATAFORMAT.md §3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from lewm.data.normalize import Normalizer, join_columns
from lewm.data.store import EpisodeStore

if TYPE_CHECKING:  # the run config only types a parameter here
    from lewm.config import RunConfig


def pixels_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) frames as stored → the model's uint8 (..., 3, H, W) input."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(frames, -1, -3)))


def split_episodes(
    num_episodes: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted (train, val) episode ids.

    The reference splits clips, so train and val share episodes and validation measures
    memorisation as much as generalisation; splitting by episode keeps every validation
    frame unseen. ``val_fraction=0`` means no validation; otherwise there is at least one
    validation and one training episode whenever there are two episodes.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes={num_episodes}: expected at least 1")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: expected a value in [0, 1)")
    num_val = 0
    if val_fraction > 0 and num_episodes >= 2:
        num_val = min(max(round(val_fraction * num_episodes), 1), num_episodes - 1)
    order = np.random.default_rng(seed).permutation(num_episodes)
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def heldout_episodes(cfg: RunConfig, store: EpisodeStore) -> np.ndarray:
    """The run's validation episodes: the ones its training never saw.

    Reuses the training split (same fraction and seed), so analyses on the run's own data
    file measure generalisation; a file with a single episode has no split and is used whole.
    """
    _, val = split_episodes(store.num_episodes, cfg.data.val_fraction, cfg.seed)
    return val if val.size else np.arange(store.num_episodes)


def frame_rows(store: EpisodeStore, episode: int, frameskip: int) -> np.ndarray:
    """Global rows of an episode's frames taken every ``frameskip`` rows from its start."""
    rows = store.episode_rows(episode)
    return np.arange(rows.start, rows.stop, frameskip, dtype=np.int64)


def clip_starts(
    store: EpisodeStore, episodes: np.ndarray, num_steps: int, frameskip: int
) -> np.ndarray:
    """Global row of every clip start: each row from which num_steps·frameskip rows stay
    inside the episode. Episodes shorter than that contribute nothing."""
    if num_steps < 1 or frameskip < 1:
        raise ValueError(f"num_steps={num_steps}, frameskip={frameskip}: expected both >= 1")
    episodes = np.asarray(episodes, dtype=np.int64).reshape(-1)
    if episodes.size and (episodes.min() < 0 or episodes.max() >= store.num_episodes):
        raise ValueError(
            f"{store.path}: episode ids must lie in [0, {store.num_episodes}), "
            f"found {episodes.min()}..{episodes.max()}"
        )
    counts = np.maximum(store.ep_len[episodes] - num_steps * frameskip + 1, 0)
    first = np.repeat(store.ep_offset[episodes], counts)
    # Position of each start inside its episode: 0..count-1, episode after episode.
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return (first + within).astype(np.int64)


def read_proprio(
    store: EpisodeStore, normalizer: Normalizer, columns: tuple[str, ...], rows: np.ndarray
) -> np.ndarray:
    """The z-scored proprioception of dataset ``rows``: float32 (len(rows), P), the
    ``columns`` joined in order."""
    raw = join_columns({c: store.read(c, rows) for c in columns}, columns, len(rows))
    return normalizer.transform(columns, raw).astype(np.float32)


def proprio_width(store: EpisodeStore, columns: tuple[str, ...]) -> int:
    """How many values ``columns`` join to per row; names the first missing column."""
    missing = [c for c in columns if c not in store.columns]
    if missing:
        raise ValueError(
            f"{store.path}: no proprioception column {missing[0]!r} (expected "
            f"{', '.join(columns)}; the file has {', '.join(store.columns)})"
        )
    first = np.zeros(1, dtype=np.int64)
    return int(join_columns({c: store.read(c, first) for c in columns}, columns, 1).shape[1])


class ClipDataset(Dataset):
    """Clip i → {"pixels": uint8 (n, 3, H, W), "action": float32 (n, f·A)}, and
    "proprio": float32 (n, P) when ``proprio_columns`` are given.

    Block k of ``action`` holds the f z-scored raw actions between frame k and frame k+1,
    concatenated row-major; the episode's NaN last action becomes 0. ``proprio`` row k is
    frame k's z-scored proprioception, the columns joined in order.
    """

    def __init__(
        self,
        store: EpisodeStore,
        episodes: np.ndarray,
        num_steps: int,
        frameskip: int,
        normalizer: Normalizer,
        proprio_columns: tuple[str, ...] = (),
    ) -> None:
        self.store = store
        self.proprio_columns = proprio_columns
        self.num_steps = num_steps
        self.frameskip = frameskip
        self.normalizer = normalizer
        self.starts = clip_starts(store, episodes, num_steps, frameskip)
        self._frame_offsets = np.arange(num_steps, dtype=np.int64) * frameskip

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[i])
        rows = start + self._frame_offsets
        frames = self.store.read("pixels", rows)
        raw = self.store.read("action", slice(start, start + self.num_steps * self.frameskip))
        action = self.normalizer.transform("action", raw).reshape(self.num_steps, -1)
        clip = {
            "pixels": pixels_tensor(frames),
            "action": torch.from_numpy(np.ascontiguousarray(action, dtype=np.float32)),
        }
        if self.proprio_columns:
            clip["proprio"] = torch.from_numpy(
                read_proprio(self.store, self.normalizer, self.proprio_columns, rows)
            )
        return clip
