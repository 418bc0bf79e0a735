"""One readable page per run: ``RUN_DIR/report.md`` (and ``report.html``) with PNG plots.

It gathers whatever the run folder holds (training logs, evaluation JSON, analysis JSON,
GIFs) and says what is missing instead of failing, so it can be run at any stage. It only
reads plain result files, never a model, so a report is cheap to regenerate.
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lewm.io import atomic_write_text
from lewm.report.plots import plot_curves, plot_rollout_error, plot_surprise
from lewm.track import log_to_run

PLOTS = "report_files"
# Training metrics worth a panel, in reading order; others in the log are ignored.
CURVES = (
    "train/pred_loss", "train/sigreg", "train/emb_rank", "val/pred_loss", "val/copy_last",
    "val/straightness",
)
GIFS_PER_FOLDER = 2
# What `lewm decoder` writes in the run folder (lewm.analysis.decoder.FIGURES, GIF_FOLDER;
# named here so that a report does not import torch).
DECODER_FIGURES, DECODER_GIFS = "decoder.json", "decoder"


@dataclass
class Page:
    """A tiny document model, so Markdown and HTML come from the same content."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", (list(header), [list(r) for r in rows])))

    def image(self, path: str, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def video(self, path: str, alt: str) -> None:
        """Played in the HTML page; Markdown has no video, so it links the file."""
        self.blocks.append(("video", (path, alt)))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "h":
                out.append(f"## {value}" if out else f"# {value}")
            elif kind == "p":
                out.append(value)
            elif kind == "table":
                header, rows = value
                lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(r) + " |" for r in rows]
                out.append("\n".join(lines))
            elif kind == "video":
                out.append(f"[{value[1]}]({value[0]})")
            else:
                out.append(f"![{value[1]}]({value[0]})")
        return "\n\n".join(out) + "\n"

    def html(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "h":
                tag = "h2" if out else "h1"
                out.append(f"<{tag}>{html.escape(value)}</{tag}>")
            elif kind == "p":
                out.append(f"<p>{html.escape(value)}</p>")
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                    for r in rows
                )
                out.append(f"<table><tr>{head}</tr>{body}</table>")
            elif kind == "video":
                src, alt = (html.escape(v, quote=True) for v in value)
                out.append(f'<video src="{src}" title="{alt}" controls loop muted autoplay>'
                           f'<a href="{src}">{alt}</a></video>')
            else:
                src, alt = (html.escape(v, quote=True) for v in value)
                out.append(f'<img src="{src}" alt="{alt}">')
        style = ("body{font-family:sans-serif;max-width:60em;margin:auto}"
                 "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
                 "img,video{max-width:100%}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style>"
                f"</head><body>{''.join(out)}</body></html>\n")


def read_metrics(run_dir: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Every logged (step, value) per metric, merged over ``logs/version_*`` (one per resume)."""
    series: dict[str, dict[float, float]] = {}
    for path in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                step = float(row.get("step") or 0)
                for name, value in row.items():
                    if name in CURVES and value not in (None, ""):
                        series.setdefault(name, {})[step] = float(value)
    return {
        name: (sorted(points), [points[s] for s in sorted(points)])
        for name in CURVES
        if (points := series.get(name))
    }


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _probe_cell(s: dict) -> str:
    return f"{s['mse']:.3f}±{s['mse_std']:.3f} ({s['r']:.3f})"


DEFAULT_KIND = "lewm"  # runs written before model.kind existed are LeWM runs
# The label of a DINO-WM run without encoder weights (lewm.baselines.dinowm_config says the
# same; report/ reads plain results and imports no model code).
RANDOM_ENCODER = "random frozen encoder, not DINOv2"


def kind_label(config: dict[str, Any], summary: dict[str, Any] | None = None) -> tuple[str, str]:
    """(kind, label): the kind with the note training recorded (an ablation, the encoder's
    origin, a noprop variant). A DINO-WM run without encoder weights planned on a random
    frozen encoder, which must never pass for DINOv2 features in a table, so that is read
    from the config even where no summary was written or its note says otherwise."""
    model = config.get("model") or {}
    kind = model.get("kind") or DEFAULT_KIND
    note = ((summary or {}).get("model") or {}).get("note") or ""
    if kind == "dinowm" and not model.get("encoder_weights") and not note.startswith(
        RANDOM_ENCODER
    ):
        note = RANDOM_ENCODER
    return kind, f"{kind} ({note})" if note else kind


def build_report(run_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.html and their plots; returns the paths written. A run that
    trains with a tracker (``train.logger``) gets the page and its figures there too."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ValueError(f"{run}: no such run folder")
    plots = run / PLOTS
    page = Page()
    config = _load(run / "config.json") or {}
    _, label = kind_label(config, _load(run / "train_summary.json"))
    page.heading(f"Run report: {run.name} ({label})")
    page.text(f"Environment {config.get('env', '?')}, preset {config.get('preset', '?')}, "
              f"data {config.get('data', {}).get('path', '?')}.")
    _training(page, run, plots)
    _evaluation(page, run)
    _probe(page, run)
    _surprise(page, run, plots)
    _straightness(page, run)
    _rollouts(page, run, plots)
    _decoder(page, run)
    _gifs(page, run)
    paths = {"markdown": run / "report.md", "html": run / "report.html"}
    atomic_write_text(paths["markdown"], page.markdown())
    atomic_write_text(paths["html"], page.html())
    log_to_run(run, {}, [paths["html"], *sorted(plots.glob("*.png"))], "report")
    return paths


def _missing(page: Page, what: str, command: str) -> None:
    page.text(f"No {what} in this run yet (`{command}` makes it).")


def _training(page: Page, run: Path, plots: Path) -> None:
    page.heading("Training")
    curves = read_metrics(run)
    if not curves:
        _missing(page, "training logs", "lewm train")
        return
    plot_curves(curves, plots / "training.png")
    page.image(f"{PLOTS}/training.png", "training curves")
    page.table(["metric", "first", "last"], [
        [name, _fmt(values[0], 4), _fmt(values[-1], 4)] for name, (_, values) in curves.items()
    ])


def eval_results(run: Path) -> dict[str, Path]:
    """Result name → JSON of every evaluation in a run: ``eval/NAME/result.json``, and the
    ``eval/NAME.json`` that runs written before results became folders hold. Hidden entries
    are an evaluation still being written (or killed while it was) and are skipped."""
    found = {p.stem: p for p in run.glob("eval/*.json") if not p.name.startswith(".")}
    found |= {p.parent.name: p for p in run.glob("eval/*/result.json")
              if not p.parent.name.startswith(".")}
    return dict(sorted(found.items()))


def _evaluation(page: Page, run: Path) -> None:
    page.heading("Evaluation")
    rows = []
    for name, path in eval_results(run).items():
        r = _load(path)
        if r and "success_rate" in r:
            n = r["episodes"] if isinstance(r["episodes"], int) else len(r["episodes"])
            # Batched evaluations time one call for many environments; per-env is comparable.
            per_plan = r.get("plan_seconds_per_env") or r.get("plan_seconds_mean")
            rows.append([name, f"{100 * r['success_rate']:.1f}%", str(n), _fmt(per_plan)])
    if not rows:
        _missing(page, "evaluation results", "lewm eval RUN")
        return
    page.table(["result", "success rate", "episodes", "s per plan"], rows)


def _probe(page: Page, run: Path) -> None:
    page.heading("Probing (frozen embeddings)")
    r = _load(run / "analysis" / "probe.json")
    if not r:
        _missing(page, "probe results", "lewm probe RUN")
        return
    page.text(f"Held-out episodes: {r['episodes']['train']} to fit, {r['episodes']['test']} to "
              "score. Cells: MSE on standardized targets ± std over samples (Pearson r).")
    page.table(["quantity", "encoder", "linear", "MLP"], [
        [name, enc, _probe_cell(t[enc]["linear"]), _probe_cell(t[enc]["mlp"])]
        for name, t in r["targets"].items() for enc in ("trained", "random_init")
    ])


def _surprise(page: Page, run: Path, plots: Path) -> None:
    page.heading("Violation of expectation (surprise)")
    results = [r for p in sorted(run.glob("analysis/surprise_*.json")) if (r := _load(p))]
    if not results:
        _missing(page, "surprise results", "lewm surprise RUN --perturb teleport")
        return
    page.table(["perturbation", "trajectories", "step", "mean Δ surprise", "t", "p (one-sided)"], [
        [r["perturbation"], str(r["trajectories"]), str(r["at"]), _fmt(r["test"]["mean_diff"]),
         _fmt(r["test"]["t"], 2), f"{r['test']['p']:.2g}"]
        for r in results
    ])
    for r in results:
        name = f"surprise_{r['perturbation']}.png"
        plot_surprise(r, plots / name)
        page.image(f"{PLOTS}/{name}", f"surprise, {r['perturbation']}")


def _straightness(page: Page, run: Path) -> None:
    page.heading("Temporal straightening")
    r = _load(run / "analysis" / "straightness.json")
    if not r:
        _missing(page, "straightness results", "lewm straightness RUN")
        return
    page.text(f"Mean cosine of consecutive latent velocities on {r['episodes']} held-out "
              "episodes; the random-init model of the same architecture stands for the start "
              "of training (the val/straightness curve above, when logged, shows the path).")
    page.table(["model", "straightness"],
               [["random init", _fmt(r["random_init"])], ["trained", _fmt(r["trained"])]])


def _rollouts(page: Page, run: Path, plots: Path) -> None:
    page.heading("Imagined rollouts")
    r = _load(run / "analysis" / "rollout_error.json")
    if not r:
        _missing(page, "rollout-error results", "lewm rollout-error RUN")
        return
    plot_rollout_error(r, plots / "rollout_error.png")
    page.table(["horizon", "LeWM latent MSE", "copy-last MSE"], [
        [str(h), _fmt(m, 4), _fmt(c, 4)]
        for h, m, c in zip(r["horizons"], r["model"], r["copy_last"], strict=True)
    ])
    page.image(f"{PLOTS}/rollout_error.png", "rollout error vs horizon")
    _media(page, run, sorted((run / "analysis" / "rollouts").glob("episode_*.*")),
           "real | imagined | goal")


def _decoder(page: Page, run: Path) -> None:
    """The pixel decoder's held-out error and what it draws of held-out episodes."""
    page.heading("Pixel decoder")
    d = _load(run / DECODER_FIGURES)
    if not d:
        _missing(page, "pixel decoder", "lewm decoder RUN")
        return
    moving = d.get("moving_pixels", {}).get("mse", {})  # absent from older decoder.json files
    page.table(["decoder", "MSE", "PSNR (dB)", "MSE on moving pixels"], [
        [label, _fmt(d["mse"][key], 5), _fmt(d["psnr_db"][key], 2), _fmt(moving.get(key), 4)]
        for key, label in ((
            "after", f"{d.get('arch', 'cross')} decoder, {d['steps']} steps"),
            ("mean_frame", "mean training frame"))
    ])  # fmt: skip
    _media(page, run, sorted((run / DECODER_GIFS).glob("episode_*.gif")),
           "real | imagined | reconstructed")


def _media(page: Page, run: Path, paths: list[Path], layout: str) -> None:
    for path in paths[:GIFS_PER_FOLDER]:
        show = page.video if path.suffix == ".mp4" else page.image
        show(path.relative_to(run).as_posix(), f"{layout}: {path.parent.name} {path.stem}")


def _gifs(page: Page, run: Path) -> None:
    """Each evaluation's first episodes, as the GIFs or MP4 videos it wrote, captioned with
    their layout (real | goal, or real | imagined | goal with ``lewm eval --imagined``)."""
    page.heading("Episodes")
    folders = [f for f in sorted(run.glob("eval/*/")) if not f.name.startswith(".")]
    shown = False
    for folder in folders:
        media = sorted([*folder.glob("*.gif"), *folder.glob("*.mp4")])
        settings = (_load(folder / "result.json") or {}).get("settings", {})
        _media(page, run, media, settings.get("media", "real | goal"))
        shown = shown or bool(media)
    if not shown:
        _missing(page, "episode GIFs or videos", "lewm eval RUN")
