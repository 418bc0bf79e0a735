"""Real | imagined | goal: what the model expected an executed action sequence to look like.

An evaluated episode (or a dataset episode) is a list of frames, one per environment step,
and the raw actions taken between them. The model sees the first frame only; the imagined
column decodes its open-loop latent rollout under the same actions, one model step per
``frameskip`` environment steps (held between them), so where the two columns part is where
the predictor's physics and the world's disagree. Needs the run's pixel decoder
(``lewm decoder RUN``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lewm.analysis.decoder import PixelDecoder, imagine, load_decoder, reconstruct
from lewm.checkpoint import Checkpoint, load_checkpoint
from lewm.data import EpisodeStore, pixels_tensor
from lewm.model.protocol import model_device
from lewm.report.gif import save_gif, side_by_side
from lewm.report.video import save_mp4

# Writes a list of H×W×3 frames to a path: save_gif or save_mp4.
Save = Callable[[Sequence[np.ndarray], Path], Path]
SAVERS: dict[str, Save] = {"gif": save_gif, "mp4": save_mp4}


def imagined_frames(
    ckpt: Checkpoint, decoder: PixelDecoder, frames: Sequence[np.ndarray], actions: np.ndarray
) -> list[np.ndarray]:
    """One decoded frame per real frame: the reconstruction of frame 0, then the open-loop
    rollout under ``actions`` (T, action_dim) raw, each model step held for ``frameskip``
    frames. Steps after the last whole action block repeat the last imagined frame."""
    skip = ckpt.config.model.frameskip
    blocks = len(actions) // skip
    device = model_device(ckpt.model)
    with torch.inference_mode():
        first = ckpt.model.encode(pixels_tensor(np.asarray(frames[:1])).to(device))
    pictures = reconstruct(decoder, first)
    if blocks:
        z_actions = ckpt.normalizer.transform("action", np.asarray(actions[: blocks * skip]))
        model_frames = np.stack([frames[k * skip] for k in range(blocks + 1)])
        rollout = imagine(ckpt, decoder, model_frames, z_actions.reshape(blocks, -1))
        pictures = np.concatenate([pictures, rollout])
    return [pictures[min(t // skip, blocks)] for t in range(len(frames))]


def triptych(
    frames: Sequence[np.ndarray], imagined: Sequence[np.ndarray], goal: np.ndarray
) -> list[np.ndarray]:
    return [side_by_side(f, i, goal) for f, i in zip(frames, imagined, strict=True)]


class ImaginedMedia:
    """An evaluation's media writer (``EpisodeMedia``) that draws real | imagined | goal.

    Built before the evaluation starts, so a run without a decoder is refused before any
    planning, naming the command that trains one."""

    layout = "real | imagined | goal"

    def __init__(self, run_dir: str | Path, device: torch.device, video: str = "gif") -> None:
        if video not in SAVERS:
            raise ValueError(f"video format {video!r}: expected gif or mp4")
        self.decoder = load_decoder(run_dir, device)
        self.ckpt = load_checkpoint(run_dir, device)
        self.save, self.suffix = SAVERS[video], video

    def __call__(
        self, folder: Path, stem: str, frames: list[np.ndarray], goal: np.ndarray,
        actions: np.ndarray,
    ) -> Path:  # fmt: skip
        imagined = imagined_frames(self.ckpt, self.decoder, frames, actions)
        return self.save(triptych(frames, imagined, goal), Path(folder) / f"{stem}.{self.suffix}")


def write_episode_videos(
    ckpt: Checkpoint, decoder: PixelDecoder, store: EpisodeStore, episodes: Sequence[int],
    folder: str | Path, video: str = "gif", max_steps: int = 0,
) -> list[Path]:
    """Dataset episodes as ``folder/episode_XXX.<video>``: every recorded frame | the rollout
    of the recorded actions | the episode's last frame (where those actions lead). With
    ``max_steps``, only that many environment steps from each episode's start."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for episode in episodes:
        start, length = int(store.ep_offset[episode]), int(store.ep_len[episode])
        length = min(length, max_steps + 1) if max_steps else length
        if length < 2:
            continue  # nothing to imagine from a single frame
        rows = np.arange(start, start + length)
        frames = list(store.read("pixels", rows))
        actions = store.read("action", rows[:-1])
        imagined = imagined_frames(ckpt, decoder, frames, actions)
        strip = triptych(frames, imagined, frames[-1])
        paths.append(SAVERS[video](strip, folder / f"episode_{int(episode):03d}.{video}"))
    return paths
