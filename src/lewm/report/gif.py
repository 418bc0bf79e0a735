"""Animated GIFs of episodes, for a person to look at: real frame | goal image.

Evaluation writes its GIFs through :func:`write_episode_gif`, which callers hand to
``evaluate_run``: planning computes the frames and never imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lewm.io import atomic_path


def side_by_side(*frames: np.ndarray, gap: int = 2) -> np.ndarray:
    """Concatenate same-height uint8 H×W×3 frames left to right with a grey gap between."""
    height = frames[0].shape[0]
    spacer = np.full((height, gap, 3), 128, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, frame in enumerate(frames):
        if i:
            parts.append(spacer)
        parts.append(frame)
    return np.concatenate(parts, axis=1)


def enlarge(frames: Sequence[np.ndarray], scale: int = 0) -> list[np.ndarray]:
    """Nearest-neighbour enlargement by ``scale`` (0: to ~256 px high): a 64-px frame is a
    few centimetres on a screen, and smoothing would invent detail the model never saw."""
    scale = scale or max(1, 256 // frames[0].shape[0])
    return [np.repeat(np.repeat(f, scale, axis=0), scale, axis=1) for f in frames]


def save_gif(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10, scale: int = 0) -> Path:
    """Write frames as a looping GIF; small frames are enlarged (nearest) to ~256 px high."""
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    images = [Image.fromarray(f) for f in enlarge(frames, scale)]
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:],
            duration=int(1000 / fps), loop=0,
        )
    return path


def write_episode_gif(
    folder: Path, stem: str, frames: Sequence[np.ndarray], goal: np.ndarray,
    actions: np.ndarray | None = None,
) -> Path:
    """One evaluated episode as ``folder/stem.gif``: each real frame beside the goal image
    (the actions are not drawn; :class:`lewm.analysis.imagined.ImaginedMedia` uses them).

    The media writer that ``lewm eval`` hands to ``lewm.plan.evaluate.evaluate_run``
    (its ``EpisodeMedia``): planning passes the frames, the report layer draws them.
    """
    return save_gif([side_by_side(frame, goal) for frame in frames], Path(folder) / f"{stem}.gif")
