"""The `lewm` commands for analysis; `register` adds them to the main app.

Each command loads a checkpoint, runs one library function from ``lewm.analysis``, writes
its JSON (and plot) under ``RUN_DIR/analysis/`` and prints a table; ``lewm report`` then
gathers those files into one page.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lewm.cli_options import SEED_MAX, Device, Seed

Guard = Callable[[Callable[[], Any]], Any]

Run = Annotated[Path, typer.Argument(help="Run folder with a trained checkpoint.")]
Data = Annotated[
    Path | None, typer.Option(help="Episode file (default: the one the run was trained on).")
]
Episodes = Annotated[
    int, typer.Option(help="Held-out episodes to use, drawn at random (0: all of them).")
]


def _checkpoint(run: Path, device: str) -> Any:
    from lewm.checkpoint import load_checkpoint
    from lewm.device import resolve_device

    return load_checkpoint(run, resolve_device(device))


def _store(ckpt: Any, data: Path | None) -> Any:
    from lewm.data import open_store

    path = data or ckpt.config.data.path
    if not path:
        raise ValueError("the run's config names no data file; pass --data FILE.h5")
    return open_store(path, cache="none")


def _check_video(video: str) -> None:
    if video not in ("none", "gif", "mp4"):
        raise ValueError(f"--video {video!r}: expected gif, mp4 or none")


def _rollout_videos(
    run: Path, ckpt: Any, store: Any, video: str, count: int, seed: int
) -> list[str]:
    """``count`` held-out episodes drawn with ``seed``, as real | imagined | goal, in
    RUN/analysis/rollouts/; the decoder is checked before anything is drawn."""
    import numpy as np

    from lewm.analysis.decoder import load_decoder
    from lewm.analysis.imagined import write_episode_videos
    from lewm.data.clips import heldout_episodes
    from lewm.model.protocol import model_device

    if video == "mp4":
        from lewm.report.video import require_pyav

        require_pyav()
    decoder = load_decoder(run, model_device(ckpt.model))
    chosen = np.random.default_rng(seed).permutation(heldout_episodes(ckpt.config, store))
    paths = write_episode_videos(ckpt, decoder, store, np.sort(chosen[:count]),
                                 run / "analysis" / "rollouts", video)  # fmt: skip
    return [str(p) for p in paths]


def _write(run: Path, name: str, result: dict) -> Path:
    from lewm.io import atomic_write_text

    path = run / "analysis" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return path


def _analyse(
    run: Path, device: str, data: Path | None, name: str, analysis: Callable[[Any, Any], dict]
) -> tuple[dict, Path]:
    """Load the run, open its data, run ``analysis(checkpoint, store)``, save it as ``name``."""
    ckpt = _checkpoint(run, device)
    result = analysis(ckpt, _store(ckpt, data))
    return result, _write(run, name, result)


def register(app: typer.Typer, console: Console, guarded: Guard) -> None:
    """Add this module's commands to `app`; `guarded` turns input errors into one clear line."""

    @app.command()
    def probe(
        run: Run,
        data: Data = None,
        targets: Annotated[
            str | None,
            typer.Option(help="Comma-separated quantities, e.g. agent_pos (default: the env's)."),
        ] = None,
        episodes: Episodes = 0,
        seed: Seed = 0,
        device: Device = "auto",
    ) -> None:
        """Linear and MLP probes of frozen embeddings for physical quantities (vs random init)."""
        from lewm.analysis.probe import run_probe

        names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
        result, path = guarded(lambda: _analyse(
            run, device, data, "probe.json",
            lambda ckpt, store: run_probe(ckpt, store, names, seed, episodes),
        ))
        table = Table(title=f"probes on {result['samples']['test']} held-out frames "
                            "(MSE on standardized targets ± std (Pearson r))")
        for column in ("quantity", "encoder", "linear", "MLP"):
            table.add_column(column)
        for name, t in result["targets"].items():
            for enc in ("trained", "random_init"):
                table.add_row(name, enc, *(
                    f"{s['mse']:.3f}±{s['mse_std']:.3f} ({s['r']:.3f})"
                    for s in (t[enc]["linear"], t[enc]["mlp"])
                ))
        console.print(table)
        console.print(f"results: {path}")

    @app.command()
    def surprise(
        run: Run,
        env: Annotated[
            str | None, typer.Option(help="Environment (default: the run's; must match it).")
        ] = None,
        perturb: Annotated[str, typer.Option(help="teleport or color.")] = "teleport",
        trajectories: Annotated[int, typer.Option(help="Paired rollouts.")] = 20,
        steps: Annotated[int, typer.Option(help="Model steps per rollout.")] = 12,
        at: Annotated[
            int | None, typer.Option(help="Step whose frame is perturbed (default: steps // 2).")
        ] = None,
        seed: Seed = 0,
        device: Device = "auto",
    ) -> None:
        """Violation of expectation: surprise of perturbed vs clean rollouts, paired t-test."""
        from lewm.analysis.surprise import run_surprise
        from lewm.report.plots import plot_surprise

        def go() -> tuple[dict, Path, Path]:
            ckpt = _checkpoint(run, device)
            if env is not None and env != ckpt.config.env:
                raise ValueError(f"--env {env!r}, but {run} was trained on {ckpt.config.env!r}")
            result = run_surprise(ckpt, perturb, trajectories, steps, at, seed)
            path = _write(run, f"surprise_{perturb}.json", result)
            return result, path, plot_surprise(result, path.with_suffix(".png"))

        result, path, png = guarded(go)
        mean, k = result["mean"], result["at"] - result["t"][0]
        test = result["test"]
        table = Table(title=f"{result['env']}: {perturb} at step {result['at']}, "
                            f"{result['trajectories']} paired rollouts")
        for column in ("clean surprise", "perturbed surprise", "t", "p (one-sided)"):
            table.add_column(column, justify="right")
        table.add_row(f"{mean['clean'][k]:.3f}", f"{mean['perturbed'][k]:.3f}",
                      f"{test['t']:.2f}", f"{test['p']:.2g}")
        console.print(table)
        console.print(f"results: {path}\nplot: {png}")

    @app.command()
    def straightness(
        run: Run,
        data: Data = None,
        episodes: Episodes = 0,
        seed: Seed = 0,
        device: Device = "auto",
    ) -> None:
        """Temporal straightness of held-out latent trajectories, trained vs random init."""
        from lewm.analysis.straightness import run_straightness

        result, path = guarded(lambda: _analyse(
            run, device, data, "straightness.json",
            lambda ckpt, store: run_straightness(ckpt, store, episodes, seed),
        ))
        table = Table(title=f"straightness on {result['episodes']} held-out episodes")
        table.add_column("random init", justify="right")
        table.add_column("trained", justify="right")
        table.add_row(f"{result['random_init']:.3f}", f"{result['trained']:.3f}")
        console.print(table)
        console.print(f"results: {path}")

    @app.command(name="rollout-error")
    def rollout_error(
        run: Run,
        data: Data = None,
        horizon: Annotated[int, typer.Option(help="Longest imagined horizon (model steps).")] = 5,
        episodes: Episodes = 0,
        seed: Seed = 0,
        device: Device = "auto",
        video: Annotated[
            str, typer.Option(help="Also draw held-out episodes as real | imagined | goal "
                              "(the decoded rollout of their recorded actions; needs lewm "
                              "decoder RUN): gif, mp4 or none.")
        ] = "none",
        videos: Annotated[
            int, typer.Option(min=1, help="Episodes drawn with --video, in "
                              "RUN/analysis/rollouts/.")
        ] = 2,
    ) -> None:
        """Open-loop latent rollout error vs horizon, next to copying the last embedding."""
        from lewm.analysis.rollout_error import run_rollout_error

        def analysis(ckpt: Any, store: Any) -> dict:
            result = run_rollout_error(ckpt, store, horizon, episodes, seed)
            if video != "none":
                result["videos"] = _rollout_videos(run, ckpt, store, video, videos, seed)
            return result

        guarded(lambda: _check_video(video))
        result, path = guarded(lambda: _analyse(run, device, data, "rollout_error.json",
                                                analysis))  # fmt: skip
        table = Table(title=f"rollout error on {result['starts']} starts "
                            f"({result['episodes']} held-out episodes)")
        for column in ("horizon", "LeWM latent MSE", "copy-last MSE"):
            table.add_column(column, justify="right")
        for h, m, c in zip(result["horizons"], result["model"], result["copy_last"], strict=True):
            table.add_row(str(h), f"{m:.4f}", f"{c:.4f}")
        console.print(table)
        console.print(f"results: {path}")
        for movie in result.get("videos", []):
            console.print(f"real | imagined | goal: {movie}", highlight=False, soft_wrap=True)

    @app.command(name="plan-gap")
    def plan_gap(
        run: Run,
        data: Data = None,
        pairs: Annotated[int, typer.Option(help="Evaluation pairs, drawn as lewm eval draws "
                                           "them (the same pairs for the same --seed and "
                                           "count).")] = 20,
        seed: Annotated[int, typer.Option(
            min=0, max=SEED_MAX, help="Pair seed (the evaluation's).")] = 42,
        device: Device = "auto",
    ) -> None:
        """Model or search? The plan's predicted vs real cost, beside the dataset's own actions."""
        from lewm.analysis.plan_gap import run_plan_gap

        result, path = guarded(lambda: _analyse(
            run, device, data, "plan_gap.json",
            lambda ckpt, store: run_plan_gap(ckpt, store, pairs, seed),
        ))
        median = result["median"]
        table = Table(title=f"{result['env']}: {result['pairs']} pairs (seed {seed}), medians")
        for column in ("actions", "model's cost", "real cost", "reach the goal"):
            table.add_column(column, justify="right")
        for kind, label in (("plan", "the plan"), ("data", "the dataset's own")):
            table.add_row(label, f"{median['predicted'][kind]:.3f}",
                          f"{median['real'][kind]:.3f}", f"{result['reached'][kind]:.0%}")
        table.add_row("none (the start)", "", f"{median['real']['start']:.3f}", "")
        console.print(table)
        for kind, label in (("data", "the dataset's own actions"), ("plan", "the plan")):
            drift = " ".join(f"{d:.3f}" for d in median["drift"][kind])
            console.print(f"imagined vs real after each block, {label}: {drift}",
                          highlight=False)  # fmt: skip
        console.print(result["verdict"], highlight=False)
        console.print(f"results: {path}")

    @app.command()
    def report(run: Run) -> None:
        """Gather a run's training curves, evaluation and analyses into report.md/.html."""
        from lewm.report.summary import build_report

        paths = guarded(lambda: build_report(run))
        console.print(f"report: {paths['markdown']}\nHTML: {paths['html']}")
