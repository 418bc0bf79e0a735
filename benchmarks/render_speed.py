"""Render throughput of TwoRoom and PushT, since rendering bounds the speed of collection.

The reference renderers cost about 31 ms (TwoRoom, torch) and 1.5 ms (PushT, pygame plus
a resize) a frame (ENVIRONMENTS.md); this measures ours at 64 px (tiny preset) and 224 px
(paper resolution). The state changes between frames so every render draws a fresh scene,
as during collection; only ``render`` is timed, not ``set_state``.

    .venv/bin/python benchmarks/render_speed.py [--frames 5000] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from lewm.envs import PushTEnv, TwoRoomEnv

RESOLUTIONS = (64, 224)


def tworoom_states(rng: np.random.Generator, frames: int) -> np.ndarray:
    return rng.uniform(21.0, 203.0, size=(frames, 2))


def pusht_states(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Poses from the reset distribution, so the block is usually whole on the canvas."""
    agent = rng.uniform(50.0, 450.0, size=(frames, 2))
    block = rng.uniform(100.0, 400.0, size=(frames, 2))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=(frames, 1))
    return np.hstack([agent, block, angle, np.zeros((frames, 2))])


ENVS = {"tworoom": (TwoRoomEnv, tworoom_states), "pusht": (PushTEnv, pusht_states)}


def frames_per_second(env_name: str, resolution: int, frames: int, seed: int = 0) -> float:
    make, sample = ENVS[env_name]
    env = make(resolution)
    env.reset(seed=seed)
    states = sample(np.random.default_rng(seed), frames)
    for state in states[:100]:
        env.set_state(state)
        env.render()
    elapsed = 0.0
    for state in states:
        env.set_state(state)
        start = time.perf_counter()
        env.render()
        elapsed += time.perf_counter() - start
    return frames / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/render_speed.json"))
    args = parser.parse_args()

    results = {
        env: {f"{r}px": frames_per_second(env, r, args.frames) for r in RESOLUTIONS} for env in ENVS
    }
    for env, by_size in results.items():
        for size, fps in by_size.items():
            print(f"{env:>7} render {size:>5}: {fps:10.0f} frames/s ({1e6 / fps:.1f} us/frame)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
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
