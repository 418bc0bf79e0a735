"""One table over several run folders, like a paper's baseline table: ``lewm compare``.

It reads only the plain files a run leaves (``config.json`` and ``train_summary.json`` as
JSON, the Lightning ``metrics.csv`` logs, each evaluation's ``result.json``), never a model
or a config class, so any world model kind compares, including kinds this module has never
heard of, and a comparison is cheap to regenerate. Whatever a run lacks shows as ``n/a``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from lewm.io import atomic_path, atomic_write_text, read_json_object  # noqa: E402
from lewm.report.summary import eval_results, kind_label  # noqa: E402
from lewm.stats import wilson_interval  # noqa: E402

CONFIG = "config.json"
SUMMARY = "train_summary.json"
LOSS = "train/loss"
SMOOTHING_WINDOW = 5  # logged points in the trailing moving average of the roughness metric
# Panels of curves.png, in reading order; a panel is drawn when any run logged its metric.
CURVE_PANELS = ("train/loss", "train/pred_loss", "val/pred_loss", "train/emb_rank",
                "train/emb_std", "train/emb_active_dims")
HEADER = (
    "run", "kind", "parameters (trainable)", "train frames/s", "final train pred loss",
    "held-out 1-step MSE: model / copy-last", "emb rank", "emb std / active dims³",
    "loss roughness¹",
    "evaluation", "success [95% CI]²", "s per plan", "planning FLOPs per plan",
)
FOOTNOTES = (
    f"¹ Loss roughness: the logged `{LOSS}` values y₁…yₙ in step order (merged over resumes) "
    f"are smoothed by a trailing moving average over {SMOOTHING_WINDOW} logged points, "
    f"sₖ = mean(y_{{k-{SMOOTHING_WINDOW - 1}}}…yₖ); roughness = Σ|sₖ₊₁ − sₖ| / (max s − min s), "
    "the total variation of the smoothed curve over its range. It is 1 for a curve that moves "
    "one way only and grows with every reversal, whatever the loss scale or the number of "
    "logged points; compare it between runs logged at the same `train.log_every`.",
    "² Wilson score interval at 95% for the success rate of that evaluation's episodes.",
    "³ Held-out embeddings: mean per-dimension std, and the principal directions whose std is "
    "at least 0.1 (a unit Gaussian, SIGReg's target, has all of them); collapse drives both "
    "to 0 while the effective rank, which normalises the spectrum, can stay high.",
    "Held-out 1-step MSE is measured after BatchNorm re-estimation; copy-last predicts the "
    "last embedding again, the floor a predictor must beat. Train frames/s is the "
    "throughput of the last `lewm train` call, n/a when that call trained no steps (it only "
    "re-exported a finished run). "
    "Emb rank / std and the final pred loss are the last logged values.",
)


def moving_average(values: Sequence[float], window: int = SMOOTHING_WINDOW) -> list[float]:
    """Trailing mean over ``window`` points; only full windows, so every point is a mean of
    the same number of values."""
    return [sum(values[i - window + 1 : i + 1]) / window for i in range(window - 1, len(values))]


def loss_roughness(values: Sequence[float], window: int = SMOOTHING_WINDOW) -> float | None:
    """Total variation of the smoothed curve divided by its range (see FOOTNOTES): 1 for a
    one-way curve, more for a noisy one. None when there are too few points to smooth or the
    smoothed curve is flat (the ratio is then undefined)."""
    smooth = moving_average(values, window)
    if len(smooth) < 2:
        return None
    span = max(smooth) - min(smooth)
    if not span > 0:
        return None
    return sum(abs(b - a) for a, b in zip(smooth, smooth[1:], strict=False)) / span


def _version(path: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", path.parent.name)
    return int(match[1]) if match else -1


def read_all_metrics(run: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Every ``train/*`` and ``val/*`` column of ``logs/version_*/metrics.csv`` as (steps,
    values), merged in version order (one version per resume; a later one wins a step)."""
    series: dict[str, dict[float, float]] = {}
    for path in sorted(run.glob("logs/version_*/metrics.csv"), key=_version):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                step = float(row.get("step") or 0)
                for name, value in row.items():
                    if name and name.startswith(("train/", "val/")) and value not in (None, ""):
                        series.setdefault(name, {})[step] = float(value)
    return {name: (sorted(p), [p[s] for s in sorted(p)]) for name, p in sorted(series.items())}


def check_run(path: str | Path) -> Path:
    """``path`` if it is a run folder (one with config.json), else a one-line ValueError."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such run folder (expected a folder with {CONFIG})")
    if not path.is_dir():
        raise ValueError(f"{path}: is a file, expected a run folder with {CONFIG}")
    if not (path / CONFIG).is_file():
        raise ValueError(f"{path}: not a run folder (no {CONFIG} in it)")
    return path


def run_names(paths: Sequence[Path]) -> list[str]:
    """Each run's folder name, with as many parent folders as it takes to tell apart runs
    whose names clash (``a/run`` and ``b/run``)."""
    resolved = [p.resolve() for p in paths]
    for i, p in enumerate(resolved):
        if p in resolved[:i]:
            raise ValueError(f"{paths[i]}: the same run folder is given twice")
    depth = [1] * len(paths)

    def name(i: int) -> str:
        return "/".join(resolved[i].parts[-depth[i]:])

    while True:
        names = [name(i) for i in range(len(paths))]
        clashing = [i for i, n in enumerate(names) if names.count(n) > 1]
        if not clashing:
            return names
        for i in clashing:
            depth[i] += 1


def _load_optional(path: Path) -> dict[str, Any]:
    return read_json_object(path, path.name) if path.is_file() else {}


def _last(curves: dict[str, tuple[list[float], list[float]]], name: str) -> float | None:
    return curves[name][1][-1] if name in curves else None


def _evaluation(name: str, path: Path) -> dict[str, Any] | None:
    result = read_json_object(path, "evaluation result")
    if "success_rate" not in result:
        return None
    episodes = result.get("episodes")
    if isinstance(episodes, list):
        n, successes = len(episodes), sum(bool(e.get("success")) for e in episodes)
    else:
        n = int(episodes or 0)
        successes = round(result["success_rate"] * n)
    return {
        "name": name,
        "success_rate": result["success_rate"],
        "successes": successes,
        "episodes": n,
        "wilson95": list(wilson_interval(successes, n)) if n else None,
        # Batched evaluations time one call for many environments; per env is comparable.
        "plan_seconds_per_env": result.get("plan_seconds_per_env")
        or result.get("plan_seconds_mean"),
        "plan_flops_per_plan": result.get("plan_flops_per_plan"),
    }


def summarise_run(path: Path, name: str) -> dict[str, Any]:
    """One row of the comparison: exact numbers, None where the run does not record them."""
    config = read_json_object(path / CONFIG, "config file")
    summary = _load_optional(path / SUMMARY)
    curves = read_all_metrics(path)
    kind, label = kind_label(config, summary)
    trained = summary.get("steps_this_call", 1) > 0 or summary.get("frames_per_second")
    evaluations = [e for n, p in eval_results(path).items() if (e := _evaluation(n, p))]
    return {
        "name": name,
        "path": str(path.resolve()),
        "kind": kind,
        "kind_label": label,
        "env": config.get("env"),
        "steps": summary.get("steps"),
        "parameters": (summary.get("model") or {}).get("parameters"),
        "collapsed": summary.get("collapsed"),
        "frames_per_second": summary.get("frames_per_second") if trained else None,
        "final_pred_loss": _last(curves, "train/pred_loss"),
        "heldout": summary.get("heldout_after_bn_recalibration"),
        "emb_rank": _last(curves, "train/emb_rank"),
        "emb_std": _last(curves, "train/emb_std"),
        "loss_roughness": loss_roughness(curves[LOSS][1]) if LOSS in curves else None,
        "last_logged": {n: values[-1] for n, (_, values) in curves.items()},
        "evaluations": evaluations,
    }


def compare(runs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Rows for ``runs``; every path is checked before any is read, so one bad path fails
    the whole comparison at once."""
    if not runs:
        raise ValueError("give at least one run folder to compare")
    paths = [check_run(p) for p in runs]
    return [summarise_run(p, n) for p, n in zip(paths, run_names(paths), strict=True)]


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}f}"
    return f"{x:.3g}"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _parameters(p: dict[str, int] | None) -> str:
    if not p or "total" not in p:
        return "n/a"
    trainable = p.get("trainable")
    return _count(p["total"]) + ("" if trainable is None else f" ({_count(trainable)})")


def _embedding_spread(r: dict[str, Any]) -> str:
    """Held-out std and the directions that keep a spread, which (unlike the rank) fall
    when embeddings collapse; the last logged training std where no summary has them."""
    held = r["heldout"] or {}
    if "emb_active_dims" not in held:
        return _num(r["emb_std"], 3)
    text = f"{_num(held['emb_std'], 3)} / {held['emb_active_dims']} of {held['emb_dim']}"
    return text + (" (collapsed)" if r.get("collapsed") else "")


def _success(e: dict[str, Any]) -> str:
    if e["wilson95"] is None:
        return "n/a (0 episodes)"
    lo, hi = e["wilson95"]
    return (f"{100 * e['success_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
            f"({e['successes']}/{e['episodes']})")


def table_rows(rows: Sequence[dict[str, Any]], newline: str = "\n") -> list[list[str]]:
    """The cells of HEADER for each run; a run's evaluations share its row, one line each
    (``newline`` joins them: ``<br>`` in Markdown)."""
    cells = []
    for r in rows:
        held = r["heldout"]
        evals = r["evaluations"]
        cells.append([
            r["name"],
            r["kind_label"],
            _parameters(r["parameters"]),
            _num(r["frames_per_second"], 0),
            _num(r["final_pred_loss"], 4),
            "n/a" if not held else f"{_num(held['pred_mse'], 4)} / "
            f"{_num(held['copy_last_mse'], 4)}",
            _num(r["emb_rank"], 1),
            _embedding_spread(r),
            _num(r["loss_roughness"], 2),
            newline.join(e["name"] for e in evals) or "none",
            newline.join(_success(e) for e in evals) or "n/a",
            newline.join(_num(e["plan_seconds_per_env"]) for e in evals) or "n/a",
            newline.join(_num(e["plan_flops_per_plan"]) for e in evals) or "n/a",
        ])
    return cells


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table, its footnotes, the last logged value of every training term (each kind logs
    its own terms, e.g. SIGReg for LeWM, variance/covariance for PLDM) and the curves."""
    out = ["# Run comparison", "", *_markdown_table(HEADER, table_rows(rows, "<br>")), ""]
    out += [f"{note}\n" for note in FOOTNOTES]
    terms = sorted({n for r in rows for n in r["last_logged"] if n.startswith("train/")})
    if terms:
        out += ["## Last logged training terms", ""]
        out += _markdown_table(["run", *terms], [
            [r["name"], *(_num(r["last_logged"].get(t), 4) for t in terms)] for r in rows
        ])
        out.append("")
    out += ["## Training curves", "", "![training curves](curves.png)", ""]
    return "\n".join(out)


def plot_comparison(
    curves: dict[str, dict[str, tuple[list[float], list[float]]]], path: Path
) -> Path:
    """One panel per metric, one line per run; the loss panel shows the raw logged values
    faintly under their moving average, so a reader sees noise against trend. Loss and
    prediction-error panels use a log scale when every value is positive."""
    panels = [m for m in CURVE_PANELS if any(m in c for c in curves.values())]
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, panels, strict=False):
        positive = True
        for i, (name, run_curves) in enumerate(curves.items()):
            if metric not in run_curves:
                continue
            steps, values = run_curves[metric]
            positive = positive and min(values) > 0
            color = colors[i % len(colors)]
            if metric == LOSS and len(values) >= SMOOTHING_WINDOW:
                ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
                ax.plot(steps[SMOOTHING_WINDOW - 1:], moving_average(values), color=color,
                        label=name)
            else:
                ax.plot(steps, values, color=color, label=name,
                        marker="." if len(steps) < 20 else None)
        if positive and "loss" in metric:
            ax.set_yscale("log")
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if panels:
        axes.flat[0].legend(fontsize=7)
    else:
        axes.flat[0].text(0.5, 0.5, "no training logs", ha="center", va="center")
    for ax in list(axes.flat)[max(1, len(panels)):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_comparison(rows: Sequence[dict[str, Any]], out: str | Path) -> dict[str, Path]:
    """compare.md, compare.json and curves.png in ``out``, each written atomically."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, expected a folder for the comparison (--out)")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "compare.md", "json": out / "compare.json",
             "curves": out / "curves.png"}
    document = {
        "runs": list(rows),
        "definitions": {"loss_roughness": FOOTNOTES[0], "success": FOOTNOTES[1],
                        "smoothing_window": SMOOTHING_WINDOW},
    }
    atomic_write_text(paths["json"], json.dumps(document, indent=2) + "\n")
    atomic_write_text(paths["markdown"], markdown(rows))
    plot_comparison({r["name"]: read_all_metrics(Path(r["path"])) for r in rows},
                    paths["curves"])
    return paths


def compare_runs(
    runs: Sequence[str | Path], out: str | Path
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """:func:`compare` then :func:`write_comparison`: nothing is written unless every run
    reads."""
    rows = compare(runs)
    return rows, write_comparison(rows, out)
