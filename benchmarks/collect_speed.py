"""Collection throughput per environment, resolution and worker count (frames written per
second, end to end: simulation, policy, rendering, compression and the HDF5 write).

Each setting collects whole episodes with the environment's default data policy into a
temporary file. MuJoCo rendering dominates Reacher and Cube, so their episode counts are
small; the figure is frames/s, which does not depend on the count once each worker has
more than one episode. ``--renders faithful fast`` measures both MuJoCo render modes in one
run (TwoRoom and PushT draw alike in both).

    .venv/bin/python benchmarks/collect_speed.py [--envs tworoom pusht reacher cube]
        [--resolutions 64 224] [--workers 1 2] [--renders faithful fast] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import write_rows

from lewm.config_checks import RENDER_MODES
from lewm.data import collect, open_store
from lewm.envs.gl import ensure_gl_backend

# Enough episodes per setting for a few seconds of work on two cores.
EPISODES = {"tworoom": 400, "pusht": 60, "reacher": 8, "cube": 4}


def measure(
    env: str, resolution: int, workers: int, episodes: int, render: str
) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.h5"
        start = time.perf_counter()
        collect(env, episodes, path, resolution=resolution, seed=0, workers=workers,
                progress=False, render=render)
        seconds = time.perf_counter() - start
        with open_store(path, cache="none") as store:
            frames = int(store.ep_len.sum())
    return {"env": env, "render": render, "resolution": resolution, "workers": workers,
            "episodes": episodes,
            "frames": frames, "seconds": round(seconds, 2),
            "frames_per_second": round(frames / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(EPISODES))
    parser.add_argument("--resolutions", nargs="+", type=int, default=[64, 224])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--renders", nargs="+", default=["faithful"], choices=RENDER_MODES)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/collect_speed.json"))
    args = parser.parse_args()
    backend = ensure_gl_backend()
    rows = []
    for env in args.envs:
        for resolution in args.resolutions:
            for workers in args.workers:
                for render in args.renders:
                    row = measure(env, resolution, workers, EPISODES[env], render)
                    row["gl"] = backend
                    rows.append(row)
                    print(f"{env:>8} {render:>8} {resolution:>4} px  {workers} worker(s): "
                          f"{row['frames_per_second']:>9.1f} frames/s "
                          f"({row['frames']} frames in {row['seconds']} s)", flush=True)
    rows.append({"cpu_count": os.cpu_count()})
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
