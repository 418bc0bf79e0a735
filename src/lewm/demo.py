"""The whole pipeline once, on TwoRoom with the CPU preset: collect, train, evaluate.

Each stage is skipped or resumed when its output already exists, so an interrupted demo
picks up where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lewm.config import EvalConfig, resolve
from lewm.data import collect
from lewm.io import atomic_write_text
from lewm.plan.evaluate import evaluate_run
from lewm.report.gif import write_episode_gif
from lewm.train.fit import train

RESOLUTION = 64


def _stage(name: str, result: str, start: float) -> dict[str, Any]:
    return {"stage": name, "result": result, "seconds": time.perf_counter() - start}


def run_demo(
    out: str | Path,
    episodes: int,
    eval_episodes: int,
    overrides: list[str],
    seed: int,
    workers: int,
    device: str,
) -> dict[str, Any]:
    out = Path(out)
    data = out / f"tworoom_{episodes}ep_{RESOLUTION}px_seed{seed}.h5"
    run_dir = out / "run"
    stages: list[dict[str, Any]] = []

    start = time.perf_counter()
    if not data.is_file():
        collect("tworoom", episodes, data, resolution=RESOLUTION, seed=seed, workers=workers)
    stages.append(_stage("collect", f"{episodes} episodes", start))

    start = time.perf_counter()
    cfg = resolve("tiny", overrides, {"seed": seed})
    summary = train(data, run_dir, cfg, device=device)
    after = summary["heldout_after_bn_recalibration"]
    stages.append(_stage(
        "train",
        f"{summary['steps']} steps, 1-step MSE {after['pred_mse']:.3f} "
        f"(copy-last {after['copy_last_mse']:.3f})",
        start,
    ))

    evals = {}
    # Two sets of 50 start/goal pairs, each with the random policy's floor beside it.
    for solver, eval_seed in (("cem", 42), ("cem", 43), ("random", 42), ("random", 43)):
        start = time.perf_counter()
        result, _ = evaluate_run(
            run_dir, data, EvalConfig(episodes=eval_episodes), None, solver, eval_seed, device,
            media=write_episode_gif,
        )
        key = f"{solver}_seed{eval_seed}"
        evals[key] = result.success_rate
        timing = (
            f", {result.plan_seconds_per_env:.2f} s/plan" if result.plan_seconds_per_env else ""
        )
        stages.append(_stage(
            f"eval {solver} (pairs seed {eval_seed})",
            f"{100 * result.success_rate:.0f}% success{timing}",
            start,
        ))
    total = sum(s["seconds"] for s in stages)
    stages.append({"stage": "total", "result": "", "seconds": total})
    path = out / "demo_summary.json"
    summary_out = {
        "stages": stages,
        "success_rates": evals,
        "train": summary,
        "gifs": str(run_dir / "eval" / "cem_seed42"),
        "path": str(path),
    }
    atomic_write_text(path, json.dumps(summary_out, indent=2))
    return summary_out
