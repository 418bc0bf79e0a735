"""One coefficient over a grid of values, each trained and evaluated, then one comparison
table: the paper's "a single hyperparameter, searched in logarithmic time" as a command.

``lewm sweep --data D.h5 --out DIR sigreg_lambda=0.01,0.03,0.1`` trains ``DIR/KEY=V`` for
each value, evaluates it with CEM on each evaluation seed and writes ``lewm compare``'s
outputs into ``DIR``. Re-running the same command resumes: a finished training is not run
again and an evaluation newer than its run's weights is kept.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lewm.checkpoint import CONFIG, WEIGHTS
from lewm.config import SEED_MAX, EvalConfig, RunConfig, resolve
from lewm.data import open_store
from lewm.io import read_json_object
from lewm.plan.evaluate import evaluate_run
from lewm.report.compare import compare, write_comparison
from lewm.train.fit import SUMMARY, prepare_config, train

SOLVER = "cem"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


@dataclasses.dataclass
class SweepRun:
    """One value of the grid: its folder and resolved config (the data's fields filled)."""

    run_dir: Path
    cfg: RunConfig


def split_grid(overrides: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """(swept key, its values, the other overrides): exactly one override holds a comma
    list, since a sweep moves one coefficient and keeps everything else fixed."""
    swept = [o for o in overrides if "=" in o and "," in o.split("=", 1)[1]]
    if not swept:
        raise ValueError(
            "no swept key: give exactly one override with a comma list, e.g. "
            "model.sigreg_lambda=0.01,0.03,0.1"
        )
    if len(swept) > 1:
        keys = ", ".join(o.split("=", 1)[0] for o in swept)
        raise ValueError(f"several swept keys ({keys}): a sweep moves one key; give one list")
    key, text = (part.strip() for part in swept[0].split("=", 1))
    values = [v.strip() for v in text.split(",")]
    if len(set(values)) != len(values):
        raise ValueError(f"{key}: a value is listed twice in {text!r}")
    return key, values, [o for o in overrides if o is not swept[0]]


def parse_seeds(text: str) -> list[int]:
    """``"42,43"`` → [42, 43]; a ValueError naming --eval-seeds for anything else."""
    expected = f"--eval-seeds must be distinct integers in [0, {SEED_MAX}] separated by commas"
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"{expected}, got {text!r}") from None
    if any(not 0 <= s <= SEED_MAX for s in seeds) or len(set(seeds)) < len(seeds):
        raise ValueError(f"{expected}, got {text!r}")
    return seeds


def folder_name(key: str, value: str) -> str:
    """``KEY=V`` as a single safe file name (a path or a space in a value becomes ``_``)."""
    return _UNSAFE.sub("_", f"{key}={value}")


def plan_sweep(
    data: str | Path,
    out: str | Path,
    overrides: Sequence[str],
    preset: str = "tiny",
    seed: int = 0,
) -> list[SweepRun]:
    """Every run of the grid with its config resolved against the data, so a bad value (or a
    data file the preset cannot train on) fails before anything is trained."""
    key, values, fixed = split_grid(overrides)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, expected a folder for the sweep's runs (--out)")
    runs = []
    with open_store(data, cache="none") as store:
        for value in values:
            cfg = resolve(preset, [*fixed, f"{key}={value}"], {"seed": seed})
            runs.append(SweepRun(out / folder_name(key, value), prepare_config(cfg, store)))
    names = [r.run_dir.name for r in runs]
    if len(set(names)) < len(names):
        raise ValueError(f"{key}: values {values} give clashing folder names {names}")
    return runs


def is_trained(run: SweepRun) -> bool:
    """Whether the folder holds this config's model trained to ``train.max_steps``: calling
    ``train`` again would only re-export it, and overwrite its training throughput with
    that of a call that trained nothing."""
    summary, config = run.run_dir / SUMMARY, run.run_dir / CONFIG
    if not (summary.is_file() and config.is_file() and (run.run_dir / WEIGHTS).is_file()):
        return False
    steps = read_json_object(summary, "training summary").get("steps", 0)
    saved_model = read_json_object(config, "config file").get("model")
    # Through JSON, as the saved one went, so a tuple field compares equal to its list.
    model = json.loads(json.dumps(dataclasses.asdict(run.cfg.model)))
    return steps >= run.cfg.train.max_steps and saved_model == model


def _is_current(result: Path, weights: Path) -> bool:
    """An evaluation counts only if it was written after the weights it evaluated."""
    return result.is_file() and result.stat().st_mtime >= weights.stat().st_mtime


def sweep(
    data: str | Path,
    out: str | Path,
    overrides: Sequence[str],
    preset: str = "tiny",
    eval_seeds: Sequence[int] = (42,),
    episodes: int = 50,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Train and evaluate every value of the one swept key, then compare them in ``out``.

    Returns the comparison rows and the paths of compare.md, compare.json and curves.png.
    ``say`` reports which run or evaluation is starting.
    """
    eval_cfg = EvalConfig(episodes=episodes, gifs=0)
    eval_cfg.validate()
    runs = plan_sweep(data, out, overrides, preset, seed)
    for i, run in enumerate(runs, 1):
        tag = f"[{i}/{len(runs)}] {run.run_dir.name}"
        if is_trained(run):
            say(f"{tag}: trained ({run.cfg.train.max_steps} steps), kept")
        else:
            say(f"{tag}: training {run.cfg.train.max_steps} steps")
            train(data, run.run_dir, run.cfg, device=device, progress=progress)
        for eval_seed in eval_seeds:
            name = f"{SOLVER}_seed{eval_seed}"
            result = run.run_dir / "eval" / name / "result.json"
            if _is_current(result, run.run_dir / WEIGHTS):
                say(f"{tag}: {name} done, kept")
                continue
            say(f"{tag}: evaluating {name} on {episodes} episodes")
            evaluate_run(run_dir=run.run_dir, data=data, eval_cfg=eval_cfg, solver=SOLVER,
                         seed=eval_seed, device=device, name=name, progress=progress)
    rows = compare([r.run_dir for r in runs])
    return rows, write_comparison(rows, out)
