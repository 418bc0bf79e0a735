"""TwoRoom render throughput, since rendering bounds the speed of data collection.

The reference torch renderer costs about 31 ms a frame (ENVIRONMENTS.md); this measures
ours at 64 px (tiny preset) and 224 px (paper resolution). The agent moves between frames
so each render blends a fresh dot, as during collection.

    .venv/bin/python benchmarks/render_speed.py [--frames 5000] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from lewm.envs import TwoRoomEnv

RESOLUTIONS = (64, 224)


def frames_per_second(resolution: int, frames: int, seed: int = 0) -> float:
    env = TwoRoomEnv(resolution)
    env.reset(seed=seed)
    states = np.random.default_rng(seed).uniform(21.0, 203.0, size=(frames, 2))
    for state in states[:100]:
        env.set_state(state)
        env.render()
    start = time.perf_counter()
    for state in states:
        env.set_state(state)
        env.render()
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/render_speed.json"))
    args = parser.parse_args()

    results = {f"{r}px": frames_per_second(r, args.frames) for r in RESOLUTIONS}
    for name, fps in results.items():
        print(f"TwoRoom render {name:>5}: {fps:10.0f} frames/s ({1e6 / fps:.1f} us/frame)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "env": "tworoom",
        "frames": args.frames,
        "frames_per_second": results,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
