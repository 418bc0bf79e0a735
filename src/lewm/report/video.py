"""MP4 videos of episodes (H.264 through PyAV, which ships its own FFmpeg): a fraction of a
GIF's size, and what browsers and slide decks play.

PyAV is an optional extra (``pip install 'lewm[video]'``); GIFs need nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from lewm.io import atomic_path
from lewm.report.gif import enlarge, side_by_side


def require_pyav() -> ModuleType:
    """PyAV, or an error saying how to get it (checked before an evaluation starts, not
    after it has planned for an hour)."""
    try:
        import av
    except ImportError:
        raise ValueError(
            "MP4 videos need PyAV: pip install 'lewm[video]' (or write GIFs: --video gif)"
        ) from None
    return av


def save_mp4(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10, scale: int = 0) -> Path:
    """Write uint8 H×W×3 frames as H.264 (yuv420p, so every player reads it); small frames
    are enlarged (nearest) to ~256 px high and padded to even sides, which yuv420p needs."""
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    av = require_pyav()
    images = enlarge(frames, scale)
    height, width = images[0].shape[:2]
    even = ((0, height % 2), (0, width % 2), (0, 0))
    path = Path(path)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}  # near-lossless: pixel art stays crisp
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.pad(image, even, mode="edge"), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def read_mp4(path: str | Path) -> np.ndarray:
    """Every frame of a video as uint8 (T, H, W, 3): what a test or a notebook reads back."""
    av = require_pyav()
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def write_episode_mp4(
    folder: Path, stem: str, frames: Sequence[np.ndarray], goal: np.ndarray,
    actions: np.ndarray | None = None,
) -> Path:
    """One evaluated episode as ``folder/stem.mp4``, laid out as its GIF is (real | goal)."""
    return save_mp4([side_by_side(frame, goal) for frame in frames], Path(folder) / f"{stem}.mp4")
