"""Seconds per CEM plan (PROTOCOL.md settings: 300 samples, 30 elites, 30 iterations,
horizon 5) for each preset, with randomly initialised weights (speed does not depend on them).

Not a test: prints figures and writes JSON.
    python benchmarks/plan_speed.py --presets tiny paper
"""

from __future__ import annotations

import statistics

import numpy as np
import torch
from common import preset_parser, write_rows

from lewm.config import preset
from lewm.data.normalize import Normalizer
from lewm.device import resolve_device
from lewm.model import LeWM
from lewm.plan.mpc import MPCPlanner


def main() -> None:
    parser = preset_parser(__doc__, "plan_speed")
    parser.add_argument("--plans", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    rows = []
    for name in args.presets:
        cfg = preset(name)
        model = LeWM(cfg.model).to(device).eval()
        block = cfg.model.action_dim
        norm = Normalizer(mean={"action": np.zeros(block)}, std={"action": np.ones(block)})
        planner = MPCPlanner(model, norm, cfg.plan, cfg.model.frameskip, block, device, seed=0)
        size = cfg.model.image_size
        frame = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        for _ in range(args.plans + 1):
            planner.plan(frame, frame)
        seconds = planner.plan_seconds[1:]
        row = {"preset": name, "device": str(device), "threads": torch.get_num_threads(),
               "samples": cfg.plan.samples, "iterations": cfg.plan.iterations,
               "horizon": cfg.plan.horizon, "seconds_per_plan_median": statistics.median(seconds),
               "seconds_per_plan": seconds}
        rows.append(row)
        median = row["seconds_per_plan_median"]
        print(f"{name:6s} {median:.3f} s per plan (median of {len(seconds)})")
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
