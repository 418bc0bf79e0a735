"""Clip loading throughput (clips/s) per dataset format (HDF5, Lance), image size, DataLoader
worker count and pixel cache setting: the rate the training loop can be fed at, model excluded.

Without --data, TwoRoom files are collected once per --resolution (with the matching
--episodes) into the temp folder and reused; the Lance copy of each is made with
``lewm convert``'s code. Clips are the paper's (4 frames 5 rows apart), batches of 64 random
clips, read through ClipDataset as training reads them; each setting is measured --repeats
times with the formats interleaved and the best kept, as other jobs on the machine only ever
slow a measurement down. Not a test: prints figures and writes JSON.
    python benchmarks/loader_speed.py --resolution 64 224 --episodes 300 60
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
from lewm.data.convert import convert


def dataset_files(args: argparse.Namespace, resolution: int, episodes: int) -> dict[str, Path]:
    """The HDF5 file and its Lance copy, made once."""
    if args.data is not None:
        h5 = args.data
    else:
        h5 = Path(tempfile.gettempdir()) / f"lewm_loader_tworoom_{resolution}_{episodes}.h5"
        if not h5.is_file():
            print(f"collecting {episodes} TwoRoom episodes at {resolution} px into {h5}")
            collect("tworoom", episodes, h5, resolution=resolution, seed=0,
                    workers=args.collect_workers, progress=False)
    lance = h5.with_suffix(".lance")
    if "lance" in args.formats and not lance.exists():
        start = time.perf_counter()
        convert(h5, lance)
        print(f"converted {h5} to {lance} in {time.perf_counter() - start:.1f} s")
    return {"h5": h5, "lance": lance}


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def clips_per_second(dataset: ClipDataset, args: argparse.Namespace, workers: int) -> dict:
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                        num_workers=workers, generator=torch.Generator().manual_seed(0),
                        multiprocessing_context=dataset.store.worker_start if workers else None)
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
    parser.add_argument("--data", type=Path, default=None, help="An existing episode .h5 file.")
    parser.add_argument("--resolution", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--episodes", type=int, nargs="+", default=[300, 60],
                        help="Episodes to collect, one per --resolution.")
    parser.add_argument("--formats", nargs="+", default=["h5", "lance"], choices=["h5", "lance"])
    parser.add_argument("--collect-workers", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--cache", nargs="+", default=["none", "all"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3,
                        help="Measurements per setting, formats interleaved; the best is kept.")
    parser.add_argument("--num-steps", type=int, default=4, help="Frames per clip (paper: 4).")
    parser.add_argument("--frameskip", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/loader_speed.json"))
    args = parser.parse_args()
    if len(args.episodes) != len(args.resolution):
        parser.error("give one --episodes count per --resolution")
    # Each DataLoader worker runs with one torch thread; the main process (--workers 0) must
    # too: on a busy machine, torch's second OpenMP thread spinning for a core turned
    # 17,700 clips/s from RAM into 125.
    torch.set_num_threads(1)
    rows = []
    for resolution, episodes in zip(args.resolution, args.episodes, strict=True):
        files = dataset_files(args, resolution, episodes)
        for cache in args.cache:
            opened, datasets = {}, {}
            for fmt in args.formats:
                start = time.perf_counter()
                store = open_store(files[fmt], cache=cache)
                opened[fmt] = time.perf_counter() - start
                norm = Normalizer.fit(store, ("action",))
                everything = np.arange(store.num_episodes)
                datasets[fmt] = ClipDataset(store, everything, args.num_steps, args.frameskip,
                                            norm)
            for workers in args.workers:
                best: dict[str, dict] = {}
                for _ in range(args.repeats):
                    for fmt, dataset in datasets.items():
                        result = clips_per_second(dataset, args, workers)
                        rate = result["clips_per_second"]
                        if fmt not in best or rate > best[fmt]["clips_per_second"]:
                            best[fmt] = result
                for fmt, result in best.items():
                    store = datasets[fmt].store
                    frames = result["clips_per_second"] * args.num_steps
                    rows.append({"format": fmt, "file": str(files[fmt]),
                                 "bytes": disk_bytes(files[fmt]), "image_size": store.image_size,
                                 "episodes": store.num_episodes, "cache": cache,
                                 "open_seconds": opened[fmt], "workers": workers,
                                 "batch": args.batch, "clips": len(datasets[fmt]),
                                 "repeats": args.repeats, "frames_per_second": frames, **result})
                    print(f"{fmt:5s} {store.image_size:3d} px cache {cache:4s} workers {workers}: "
                          f"{result['clips_per_second']:8.1f} clips/s ({frames:7.0f} frames/s), "
                          f"open {opened[fmt]:.2f} s, first batch "
                          f"{result['first_batch_seconds']:.2f} s")
            for dataset in datasets.values():
                dataset.store.close()
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
