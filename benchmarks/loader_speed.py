"""Clip loading throughput (clips/s) from an HDF5 episode file, per DataLoader worker count and
pixel cache setting: the rate the training loop can be fed at, model excluded.

Without --data, a TwoRoom file at --resolution (224 px, as the paper's datasets) is collected
once into the temp folder and reused. Not a test: prints figures and writes JSON.
    python benchmarks/loader_speed.py --workers 0 2 --cache none all
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import write_rows
from torch.utils.data import DataLoader

from lewm.data import ClipDataset, Normalizer, collect, open_store


def dataset_file(args: argparse.Namespace) -> Path:
    if args.data is not None:
        return args.data
    path = Path(tempfile.gettempdir()) / f"lewm_loader_tworoom_{args.resolution}_{args.episodes}.h5"
    if not path.is_file():
        print(f"collecting {args.episodes} TwoRoom episodes at {args.resolution} px into {path}")
        collect("tworoom", args.episodes, path, resolution=args.resolution, seed=0,
                workers=args.collect_workers, progress=False)
    return path


def clips_per_second(dataset: ClipDataset, args: argparse.Namespace, workers: int) -> dict:
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                        num_workers=workers, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)  # worker start-up and the first batch, reported apart from the steady rate
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    seconds = time.perf_counter() - start
    return {"first_batch_seconds": first, "clips_per_second": args.batches * args.batch / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="An existing episode file.")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--collect-workers", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--cache", nargs="+", default=["none", "all"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--num-steps", type=int, default=4, help="Frames per clip (paper: 4).")
    parser.add_argument("--frameskip", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/loader_speed.json"))
    args = parser.parse_args()
    path = dataset_file(args)
    rows = []
    for cache in args.cache:
        store = open_store(path, cache=cache)
        norm = Normalizer.fit(store, ("action",))
        episodes = np.arange(store.num_episodes)
        dataset = ClipDataset(store, episodes, args.num_steps, args.frameskip, norm)
        for workers in args.workers:
            result = clips_per_second(dataset, args, workers)
            frames = result["clips_per_second"] * args.num_steps
            rows.append({"file": str(path), "image_size": store.image_size, "cache": cache,
                         "workers": workers, "batch": args.batch, "clips": len(dataset),
                         "frames_per_second": frames, **result})
            print(f"cache {cache:4s} workers {workers}: {result['clips_per_second']:8.1f} clips/s "
                  f"({frames:7.0f} frames/s at {store.image_size} px), first batch "
                  f"{result['first_batch_seconds']:.2f} s")
        store.close()
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
