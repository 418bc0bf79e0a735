"""Episode files, training clips, normalization statistics and data collection."""

from lewm.data.clips import ClipDataset, clip_starts, pixels_tensor, split_episodes
from lewm.data.collect import collect
from lewm.data.lance_store import LanceEpisodeStore
from lewm.data.normalize import Normalizer
from lewm.data.shards import ShardedEpisodeStore, find_shards, open_store, shard_path
from lewm.data.store import DataFileError, EpisodeStore, EpisodeWriter

__all__ = [
    "ClipDataset",
    "DataFileError",
    "EpisodeStore",
    "EpisodeWriter",
    "LanceEpisodeStore",
    "Normalizer",
    "ShardedEpisodeStore",
    "clip_starts",
    "collect",
    "find_shards",
    "open_store",
    "pixels_tensor",
    "shard_path",
    "split_episodes",
]
