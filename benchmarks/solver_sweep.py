"""TwoRoom success rate of each solver setting against its planning time, on a trained run.

Not a test: runs the evaluation protocol (50 start/goal pairs) once per setting, prints a
table, and writes JSON and a PNG (success vs seconds per plan).
    python benchmarks/solver_sweep.py RUN_DIR [--episodes 50] [--seed 42]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lewm.config import EvalConfig  # noqa: E402
from lewm.plan.evaluate import evaluate_run  # noqa: E402

# (label, solver, plan overrides); the first is the paper's CEM, the reference point.
SETTINGS = [
    ("CEM 300x30 (paper)", "cem", []),
    ("CEM 300x10", "cem", ["plan.iterations=10"]),
    ("CEM 300x5", "cem", ["plan.iterations=5"]),
    ("CEM 100x6", "cem", ["plan.samples=100", "plan.elites=10", "plan.iterations=6"]),
    ("CEM 100x6 warm", "cem", ["plan.samples=100", "plan.elites=10", "plan.iterations=6",
                               "plan.warm_start=true"]),
    ("iCEM 100x6", "icem", ["plan.samples=100", "plan.elites=10", "plan.iterations=6"]),
    ("iCEM 300x10", "icem", ["plan.iterations=10"]),
    ("MPPI 300x10", "mppi", ["plan.iterations=10"]),
    ("MPPI 300x5", "mppi", ["plan.iterations=5"]),
    ("MPPI 200x5", "mppi", ["plan.samples=200", "plan.iterations=5"]),
    ("MPPI 100x6", "mppi", ["plan.samples=100", "plan.iterations=6"]),
    ("Adam 16x30", "gradient", ["plan.samples=16", "plan.iterations=30"]),
    ("Adam 8x15", "gradient", ["plan.samples=8", "plan.iterations=15"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/solver_sweep"))
    parser.add_argument("--only", nargs="+", help="run only these setting labels")
    args = parser.parse_args()
    rows = []
    for label, solver, overrides in SETTINGS:
        if args.only and label not in args.only:
            continue
        result, _ = evaluate_run(
            args.run, None, EvalConfig(episodes=args.episodes, batch=args.batch, gifs=0),
            overrides, solver, args.seed, "cpu",
            "sweep_" + re.sub(r"[^A-Za-z0-9._+-]+", "_", label).strip("_"),
            progress=False,
        )
        rows.append({"setting": label, "solver": solver, "overrides": overrides,
                     "success_rate": result.success_rate,
                     "seconds_per_env_plan": result.plan_seconds_per_env})
        print(f"{label:20s} {100 * result.success_rate:5.1f}%  "
              f"{result.plan_seconds_per_env:.3f} s per plan", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        ax.scatter(row["seconds_per_env_plan"], 100 * row["success_rate"])
        ax.annotate(row["setting"], (row["seconds_per_env_plan"], 100 * row["success_rate"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("seconds per plan (per environment, batched)")
    ax.set_ylabel("success rate (%)")
    ax.set_title(f"TwoRoom, {args.episodes} episodes, pairs seed {args.seed}")
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
