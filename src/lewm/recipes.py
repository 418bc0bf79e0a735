"""One command per task from nothing to a success rate: collect, train, evaluate.

A recipe is the dataset (size, resolution, data policy, render mode), the training budget
and the evaluation, sized for a 2-core machine in about an hour (TwoRoom: minutes). Each
stage is skipped or resumed when its output exists, so a re-run picks up where an
interrupted one stopped. ``lewm demo`` is the TwoRoom recipe.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lewm.config import EvalConfig, resolve
from lewm.data import collect, open_store
from lewm.envs import get_env_spec
from lewm.io import atomic_write_text
from lewm.plan.evaluate import evaluate_run
from lewm.report.gif import write_episode_gif
from lewm.train.fit import train

PAIR_SEEDS = (42, 43)
# Planning, then the floor any planner must beat, on the same pairs.
SOLVERS = ("cem", "random")


@dataclass(frozen=True)
class Recipe:
    """``measured`` says what the recipe gave on a 2-core CPU, or that it is not measured
    yet: a recipe is a claim only once it has been run."""

    env: str
    episodes: int
    resolution: int
    policy: str | None
    render: str
    steps: int
    overrides: tuple[str, ...]
    measured: str


RECIPES: dict[str, Recipe] = {
    "tworoom": Recipe(
        env="tworoom", episodes=3000, resolution=64, policy="heuristic", render="faithful",
        steps=1000, overrides=(),
        measured="5.5 min; CEM 100% / 98% vs random 20% / 6% (pair seeds 42 / 43)",
    ),
    "reacher": Recipe(
        env="reacher", episodes=1000, resolution=64, policy="random", render="fast",
        steps=6000, overrides=("model.history=3", "plan.history=3"),
        measured="~51 min (collect 4, train 46); CEM 96% / 82% vs random 8% / 10%. With one "
        "frame of history: 18% / 36% after 3,000 steps, 24% / 36% after 6,000",
    ),
    "pusht": Recipe(
        env="pusht", episodes=2000, resolution=64, policy="pusher", render="faithful",
        steps=6000, overrides=(),
        measured="~36 min (collect ~3, train 33); CEM 12% / 14% vs random 4% / 0%: plans, "
        "far from the paper's 96%. lewm plan-gap: the plans score below the data's own "
        "actions yet reach the goal far less often (15% vs 85%), so the model, not the "
        "search, is the limit. A paper-width predictor (embed 192, depth 6): 8% / 14%",
    ),
    "cube": Recipe(
        env="cube", episodes=600, resolution=64, policy="oracle", render="fast",
        steps=4000, overrides=(),
        measured="~48 min (collect 27 with the test suite beside it, an estimated ~19 alone "
        "at collect_speed's rate; train 15); CEM 12% / 12% vs random 6% / 6%: above the "
        "floor, far from the paper's 74%. With 300 episodes: 4% / 16% vs 8% / 8%; with "
        "three frames: 8% / 16%. lewm plan-gap: the model follows the data's actions but not "
        "CEM's plans, which leave what the data covers. Oracle data with random-action bursts "
        "(--policy explore): 8% / 14% vs random 10% / 6% on oracle pairs, no better",
    ),
}  # fmt: skip


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]


def _stage(name: str, result: str, start: float) -> dict[str, Any]:
    return {"stage": name, "result": result, "seconds": time.perf_counter() - start}


def run_recipe(
    name: str,
    out: str | Path,
    seed: int = 0,
    workers: int = 1,
    device: str = "auto",
    episodes: int | None = None,
    eval_episodes: int = 50,
    overrides: list[str] | None = None,
    summary_name: str = "recipe_summary.json",
    progress: bool = True,
    policy: str | None = None,
) -> dict[str, Any]:
    """Collect ``OUT/<env>_<N>ep_<R>px_seed<S>.h5`` (unless there), train ``OUT/run`` (or
    resume it) with the tiny preset for the recipe's steps, evaluate CEM and the random
    floor on pair seeds 42 and 43; ``overrides`` come last (e.g. ``train.max_steps=…``).
    ``policy`` replaces the recipe's data policy; its name then joins the file's, so a
    variant never reuses the recipe's data. Writes and returns the summary: every stage with
    its wall-clock and result."""
    recipe = get_recipe(name)
    episodes = episodes or recipe.episodes
    policy = policy or recipe.policy
    get_env_spec(recipe.env).policy_factory(policy)  # an unknown policy fails before any work
    out = Path(out)
    variant = "" if policy == recipe.policy else f"_{policy}"
    data = out / f"{recipe.env}{variant}_{episodes}ep_{recipe.resolution}px_seed{seed}.h5"
    run_dir = out / "run"
    stages: list[dict[str, Any]] = []

    start = time.perf_counter()
    if not data.is_file():
        collect(recipe.env, episodes, data, resolution=recipe.resolution, seed=seed,
                workers=workers, policy=policy, render=recipe.render,
                progress=progress)  # fmt: skip
    with open_store(data, cache="none") as store:
        frames = int(store.ep_len.sum())
        if store.attrs.get("policy") != policy:
            raise ValueError(
                f"{data}: collected with policy {store.attrs.get('policy')!r}, but the recipe "
                f"runs {policy!r}; move the file away or use another --out"
            )
    stages.append(_stage("collect", f"{episodes} episodes, {frames} frames", start))

    start = time.perf_counter()
    cfg = resolve(
        "tiny", [f"train.max_steps={recipe.steps}", *recipe.overrides, *(overrides or [])],
        {"seed": seed},
    )  # fmt: skip
    summary = train(data, run_dir, cfg, device=device, progress=progress)
    after = summary["heldout_after_bn_recalibration"]
    stages.append(_stage(
        "train",
        f"{summary['steps']} steps, 1-step MSE {after['pred_mse']:.3f} "
        f"(copy-last {after['copy_last_mse']:.3f})",
        start,
    ))  # fmt: skip

    evals = {}
    for solver in SOLVERS:
        for pair_seed in PAIR_SEEDS:
            start = time.perf_counter()
            result, _ = evaluate_run(
                run_dir, data, EvalConfig(episodes=eval_episodes), None, solver, pair_seed,
                device, progress=progress, media=write_episode_gif,
            )  # fmt: skip
            key = f"{solver}_seed{pair_seed}"
            evals[key] = result.success_rate
            timing = (
                f", {result.plan_seconds_per_env:.2f} s/plan"
                if result.plan_seconds_per_env else ""
            )  # fmt: skip
            stages.append(_stage(
                f"eval {solver} (pairs seed {pair_seed})",
                f"{100 * result.success_rate:.0f}% success{timing}",
                start,
            ))  # fmt: skip
    total = sum(s["seconds"] for s in stages)
    stages.append({"stage": "total", "result": "", "seconds": total})
    path = out / summary_name
    summary_out = {
        "recipe": {"name": name, **asdict(recipe), "episodes": episodes, "policy": policy,
                   "seed": seed, "extra_overrides": list(overrides or [])},
        "stages": stages,
        "success_rates": evals,
        "train": summary,
        "gifs": str(run_dir / "eval" / f"cem_seed{PAIR_SEEDS[0]}"),
        "path": str(path),
    }
    atomic_write_text(path, json.dumps(summary_out, indent=2))
    return summary_out
