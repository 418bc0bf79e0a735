"""The ``lewm`` command: thin wrappers over library functions, one per verb."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lewm.cli_options import Device, Seed
from lewm.envs import ENV_NAMES
from lewm.envs.gl import GLUnavailableError
from lewm.io import explain_os_error

app = typer.Typer(
    help="LeWorldModel: collect pixel datasets, train a JEPA world model, plan with CEM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
T = TypeVar("T")

Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Config overrides as key=value (dotted path or unique field name), "
        "e.g. train.lr=1e-3 model.patch_size=8. `lewm config` lists every field.",
        show_default=False,
    ),
]
Preset = Annotated[
    str, typer.Option(help="Named preset: tiny (CPU) or paper (the released model).")
]


def _fail(message: str) -> NoReturn:
    # Escaped: messages quote user paths and syntax like hf://OWNER/REPO[@REVISION][/PATH],
    # which rich would otherwise read as markup (and fail on).
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def _warn(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False,
                  soft_wrap=True)


def _guarded(fn: Callable[[], T]) -> T:
    """Turn the library's input errors into one clear line and exit code 2, no traceback, and
    its warnings into one line each."""
    shown, warnings.showwarning = warnings.showwarning, _warn
    try:
        return fn()
    except OSError as exc:
        _fail(explain_os_error(exc) if exc.errno else str(exc))
    except (ValueError, GLUnavailableError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: nothing half-written was left behind")
        raise typer.Exit(130) from None
    finally:
        warnings.showwarning = shown


@app.command()
def collect(
    env: Annotated[str, typer.Argument(help=f"Environment: {', '.join(ENV_NAMES)}.")],
    episodes: Annotated[int, typer.Option(help="Number of episodes to record.")] = 1000,
    out: Annotated[
        Path, typer.Option(help="Output dataset: an HDF5 .h5 file, or a .lance folder "
                           "(written atomically; must not exist yet).")
    ] = Path("data.h5"),
    overwrite: Annotated[
        bool, typer.Option(help="Replace --out if it is an existing regular file.")
    ] = False,
    resolution: Annotated[
        int, typer.Option(help="Square image size in pixels, 16 to 1024.")
    ] = 64,
    seed: Seed = 0,
    workers: Annotated[
        int, typer.Option(help="Parallel worker processes, at most the CPUs available.")
    ] = 1,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Record only shard i of n (e.g. 3/8): a contiguous block of the --episodes, "
            "written to data-00003-of-00008.h5 for --out data.h5. For a cluster job array, run "
            "one job per shard with the same --episodes and --seed (e.g. --shard "
            "$SLURM_ARRAY_TASK_ID/8); `lewm train --data data.h5` then reads the shards as one "
            "dataset.",
            show_default=False,
        ),
    ] = None,
    render: Annotated[
        str, typer.Option(help="How MuJoCo scenes (reacher, cube) are drawn: faithful (as the "
                          "released datasets: shadows, reflections, multisampling) or fast "
                          "(without them, ~10x faster on a CPU). Recorded in the file; runs "
                          "trained on it evaluate the same way.")
    ] = "faithful",
    policy: Annotated[
        str | None,
        typer.Option(
            help="Data policy: tworoom heuristic; pusht weak (the reference's) or pusher "
            "(pushes the block towards random target poses); reacher random (the released "
            "data) or ou (smooth Ornstein-Uhlenbeck torques, wider coverage); cube oracle (the "
            "released data) or explore (the oracle with bursts of random actions). "
            "Default: the first listed. Or replay:FILE to re-run the episodes of a dataset "
            "(e.g. official expert data) from their start states with their actions.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Record an offline dataset with the environment's data-collection policy."""
    from lewm.data import collect as collect_episodes

    path = _guarded(
        lambda: collect_episodes(env, episodes, out, resolution=resolution, seed=seed,
                                 workers=workers, shard=_parse_shard(shard), policy=policy,
                                 overwrite=overwrite, render=render)
    )
    console.print(f"wrote {path}")


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"3/8"`` → (3, 8); a ValueError that names the option for anything else."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or int(match[1]) >= int(match[2]):
        raise ValueError(f"--shard must look like i/n with 0 <= i < n, got {text!r}")
    return int(match[1]), int(match[2])


@app.command()
def train(
    data: Annotated[
        Path, typer.Option(help="Training dataset: .h5 file, .lance folder or hf:// path.")
    ],
    out: Annotated[Path, typer.Option(help="Run folder; re-running resumes it.")],
    overrides: Overrides = None,
    preset: Preset = "tiny",
    max_steps: Annotated[int | None, typer.Option(help="Optimiser steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Clips per batch.")] = None,
    seed: Seed = 0,
    device: Device = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train LeWM from pixels (or resume the run in --out) and export its checkpoint."""
    from lewm.config import resolve
    from lewm.train.fit import train as train_run

    def go() -> dict[str, Any]:
        cfg = resolve(
            preset,
            overrides,
            {"train.max_steps": max_steps, "train.batch_size": batch_size, "seed": seed},
        )
        return train_run(data, out, cfg, device=device, progress=progress)

    summary = _guarded(go)
    if os.environ.get("RANK", "0") != "0":
        return  # under DDP every process returns the summary; one table is enough
    before = summary["heldout_before_bn_recalibration"]
    after = summary["heldout_after_bn_recalibration"]
    model = summary["model"]["kind"] + (
        f" ({summary['model']['note']})" if summary["model"]["note"] else ""
    )
    table = Table(title=f"trained {out}: {model}, {summary['steps']} steps")
    table.add_column("held-out 1-step MSE (eval mode)")
    table.add_column("model", justify="right")
    table.add_column("copy last embedding", justify="right")
    table.add_row("before BN re-estimation", f"{before['pred_mse']:.4f}",
                  f"{before['copy_last_mse']:.4f}")
    table.add_row("after BN re-estimation", f"{after['pred_mse']:.4f}",
                  f"{after['copy_last_mse']:.4f}")
    console.print(table)
    console.print(
        f"held-out embeddings: std {after['emb_std']:.3g}, {after['emb_active_dims']} of "
        f"{after['emb_dim']} directions with std >= 0.1, effective rank {after['emb_rank']:.1f}"
    )
    if summary["frames_per_second"]:
        console.print(f"training throughput: {summary['frames_per_second']:.0f} frames/s")


@app.command(name="eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder with a trained checkpoint.")],
    data: Annotated[
        Path | None, typer.Option(help="Dataset with start/goal states (default: the run's).")
    ] = None,
    overrides: Overrides = None,
    episodes: Annotated[
        int | None, typer.Option(help="Start/goal pairs to evaluate (default: the run's "
                                 "eval.episodes, 50 unless changed).", show_default=False),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Episodes to draw pairs from: val|train|all (default: "
                                 "the run's eval.split).", show_default=False),
    ] = None,
    solver: Annotated[
        str | None,
        typer.Option(help="cem | icem | mppi | gradient, or random for the no-model floor "
                     "(default: the run's plan.solver). Tune with plan.* overrides."),
    ] = None,
    batch: Annotated[
        int | None, typer.Option(help="Environments planned together in one call (default: "
                                 "the run's eval.batch).", show_default=False),
    ] = None,
    render: Annotated[
        str | None, typer.Option(help="Draw the environment faithful or fast (default: as "
                                 "the run's training data was drawn; a mismatch is warned "
                                 "about).", show_default=False),
    ] = None,
    seed: Seed = 42,
    seeds: Annotated[
        int, typer.Option(min=1, help="Evaluate K pair sets, seeds SEED..SEED+K-1, and report "
                          "their mean with 95% intervals (Wilson per set and pooled, Student-t "
                          "across sets)."),
    ] = 1,
    device: Device = "auto",
    name: Annotated[
        str | None,
        typer.Option(help="Result name: the folder RUN/eval/NAME/ (default SOLVER_seedS; "
                     "NAME_seedS with --seeds)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    video: Annotated[
        str, typer.Option(help="How the first eval.gifs episodes are written: gif, or mp4 "
                          "(H.264, needs pip install 'lewm[video]').")
    ] = "gif",
    imagined: Annotated[
        bool, typer.Option(help="Draw real | imagined | goal, imagined being the decoded "
                           "open-loop rollout of the executed actions; needs the run's "
                           "decoder (lewm decoder RUN).")
    ] = False,
) -> None:
    """Goal-reaching evaluation (PROTOCOL.md): success rate with its 95% interval, steps to
    success, starts already at their goal, and seconds per plan.

    Starts from the run's saved eval section; --episodes, --split, --batch and any
    eval.FIELD=VALUE or plan.FIELD=VALUE override change it for this evaluation."""
    from lewm.plan.evaluate import evaluate_seeds
    from lewm.report.gif import write_episode_gif
    from lewm.report.video import require_pyav, write_episode_mp4

    writers = {"gif": write_episode_gif, "mp4": write_episode_mp4}
    if video not in writers:
        _fail(f"--video {video!r}: expected gif or mp4")
    if video == "mp4":
        _guarded(require_pyav)
    media = writers[video]
    if imagined:
        from lewm.analysis.imagined import ImaginedMedia
        from lewm.device import resolve_device

        media = _guarded(lambda: ImaginedMedia(run, resolve_device(device), video))
    flags = {"episodes": episodes, "split": split, "batch": batch, "render": render}
    given = [f"eval.{k}={v}" for k, v in flags.items() if v is not None]

    def go() -> Any:
        return evaluate_seeds(
            run, list(range(seed, seed + seeds)), name, data=data, overrides=[*given,
            *(overrides or [])], solver=solver, device=device, progress=progress,
            media=media,
        )  # fmt: skip

    runs, summary, summary_path = _guarded(go)
    for result, path in runs:
        print_eval(result.to_dict(), path)
    if summary_path is not None:
        print_seeds(summary, summary_path)


def print_eval(result: dict[str, Any], path: Path) -> None:
    s = result["settings"]
    kind = s.get("model") or {"kind": "lewm", "note": ""}  # results from before kinds
    model = kind["kind"] + (f" ({kind['note']})" if kind["note"] else "")
    table = Table(
        title=f"{s['env']}: {model}, {s['solver']} on {len(result['episodes'])} episodes"
    )
    table.add_column("success [95% Wilson]", justify="right")
    table.add_column("median steps to success", justify="right")
    table.add_column("s per plan call (mean / median)", justify="right")
    table.add_column("envs per call", justify="right")
    table.add_column("s per env-plan", justify="right")
    mean, median = result["plan_seconds_mean"], result["plan_seconds_median"]
    per_env, size = result["plan_seconds_per_env"], result["envs_per_call_mean"]
    steps = result.get("steps_to_success_median")
    table.add_row(
        _rate(round(result["success_rate"] * len(result["episodes"])), len(result["episodes"])),
        "-" if steps is None else f"{steps:g}",
        "-" if mean is None else f"{mean:.3f} / {median:.3f}",
        "-" if size is None else f"{size:.1f}",
        "-" if per_env is None else f"{per_env:.3f}",
    )
    console.print(table)
    if result.get("compile_seconds") is not None:
        console.print(f"plan.compile: {result['compile_seconds']:.1f} s compiling, not in the "
                      "plan times")  # fmt: skip
    solved = result.get("solved_starts", 0)
    if solved:
        kept = "evaluated" if not s["eval"].get("exclude_solved_starts", True) else "replaced"
        console.print(f"{solved} drawn start(s) already satisfied the goal: {kept} "
                      "(eval.exclude_solved_starts)")  # fmt: skip
    console.print(f"results: {path}\nGIFs or videos: {path.parent}/")


def _rate(successes: int, n: int) -> str:
    from lewm.stats import wilson_interval

    lo, hi = wilson_interval(successes, n)
    return f"{100 * successes / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({successes}/{n})"


def print_seeds(summary: dict[str, Any], path: Path) -> None:
    """Several pair seeds side by side, then what they say together."""
    table = Table(title=f"{summary['sets']} pair seeds")
    table.add_column("pair seed")
    table.add_column("success [95% Wilson]", justify="right")
    table.add_column("median steps to success", justify="right")
    for row in summary["per_seed"]:
        steps = row["steps_to_success_median"]
        table.add_row(str(row["seed"]), _rate(row["successes"], row["episodes"]),
                      "-" if steps is None else f"{steps:g}")  # fmt: skip
    pooled = summary["pooled"]
    table.add_row("pooled", _rate(pooled["successes"], pooled["episodes"]), "")
    lo, hi = summary["mean_t95"]
    table.add_row(
        "mean over seeds",
        f"{100 * summary['mean_rate']:.1f}% ± {100 * summary['std_rate']:.1f} sd "
        f"[{100 * lo:.1f}, {100 * hi:.1f}] (t, 95%)",
        "",
    )
    console.print(table)
    console.print(f"summary: {path}")


@app.command()
def config(
    overrides: Overrides = None,
    preset: Preset = "tiny",
) -> None:
    """Print the resolved configuration (every field that key=value can set)."""
    from lewm.config import resolve

    cfg = _guarded(lambda: resolve(preset, overrides))
    console.print_json(json.dumps(cfg.to_dict()))


@app.command()
def params(
    overrides: Overrides = None,
    preset: Preset = "paper",
) -> None:
    """Print the per-module parameter counts of a preset's model (any model.kind)."""
    from lewm.config import resolve
    from lewm.registry import build_model

    cfg = _guarded(lambda: resolve(preset, overrides))
    counts = build_model(cfg.model).param_counts()
    table = Table(title=f"{cfg.model.kind} parameters, preset {preset!r}")
    table.add_column("module")
    table.add_column("parameters", justify="right")
    for module, count in counts.items():
        table.add_row(module, f"{count:,}")
    console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the dataset and the run.")] = Path("demo"),
    episodes: Annotated[int, typer.Option(help="Episodes to collect.")] = 3000,
    eval_episodes: Annotated[int, typer.Option(help="Evaluation pairs per seed.")] = 50,
    overrides: Overrides = None,
    seed: Seed = 0,
    workers: Annotated[int, typer.Option(help="Collection worker processes.")] = 1,
    device: Device = "auto",
) -> None:
    """Collect TwoRoom, train the tiny preset, evaluate (the tworoom recipe); prints a
    one-screen summary."""
    from lewm.recipes import run_recipe

    summary = _guarded(
        lambda: run_recipe("tworoom", out, seed, workers, device, episodes, eval_episodes,
                           overrides or [], summary_name="demo_summary.json")
    )
    print_stages("lewm demo: TwoRoom, preset tiny", summary)


@app.command()
def recipe(
    name: Annotated[
        str | None, typer.Argument(help="tworoom, reacher, pusht or cube; none lists them.",
                                   show_default=False),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the dataset, the run and the summary.",
                                  show_default=False),
    ] = None,
    overrides: Overrides = None,
    seed: Seed = 0,
    workers: Annotated[int, typer.Option(help="Collection worker processes.")] = 1,
    episodes: Annotated[
        int | None, typer.Option(help="Episodes to collect (default: the recipe's).",
                                 show_default=False),
    ] = None,
    eval_episodes: Annotated[int, typer.Option(help="Evaluation pairs per seed.")] = 50,
    policy: Annotated[
        str | None,
        typer.Option(help="Data policy instead of the recipe's (see lewm collect --help); "
                     "the dataset's file name then carries it.", show_default=False),
    ] = None,
    device: Device = "auto",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """A task from nothing to a success rate on a laptop: collect, train the tiny preset,
    evaluate CEM and the random floor on pair seeds 42 and 43. Re-running resumes."""
    from lewm.recipes import RECIPES, run_recipe

    if name is None:
        table = Table(title="recipes (lewm recipe NAME --out DIR)")
        for column in ("name", "data", "steps", "measured on 2 CPU cores"):
            table.add_column(column)
        for key, r in RECIPES.items():
            data = f"{r.episodes} x {r.policy}, {r.resolution} px, {r.render}"
            table.add_row(key, data, str(r.steps), r.measured)
        console.print(table)
        return
    if out is None:
        _fail("--out DIR is required to run a recipe")
    summary = _guarded(
        lambda: run_recipe(name, out, seed, workers, device, episodes, eval_episodes,
                           overrides or [], progress=progress, policy=policy)
    )
    print_stages(f"lewm recipe {name}", summary)


def print_stages(title: str, summary: dict[str, Any]) -> None:
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("result", justify="right")
    table.add_column("wall-clock", justify="right")
    for row in summary["stages"]:
        table.add_row(row["stage"], row["result"], f"{row['seconds'] / 60:.1f} min")
    console.print(table)
    console.print(f"GIFs: {summary['gifs']}\nsummary: {summary['path']}")


def _register_extensions() -> None:
    """Commands that live beside their subject (analysis, interop) add themselves here."""
    from lewm import cli_analysis, cli_compare, cli_decoder, cli_interop

    for module in (cli_analysis, cli_interop, cli_compare, cli_decoder):
        module.register(app, console, _guarded)


_register_extensions()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
