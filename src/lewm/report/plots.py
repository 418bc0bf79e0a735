"""PNG plots of plain results (lists of numbers), for reports a person reads without
TensorBoard. matplotlib's Agg backend is used so plotting never needs a display."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from lewm.io import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path
) -> Path:
    """One small panel per metric: name → (steps, values)."""
    cols = min(3, max(1, len(curves)))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, (steps, values)) in zip(axes.flat, curves.items(), strict=False):
        ax.plot(steps, values, marker="." if len(steps) < 20 else None)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    return _save(fig, path)


def plot_surprise(result: Mapping, path: str | Path) -> Path:
    """Per-trajectory surprise (faint) and the means, with the perturbation step marked."""
    t = result["t"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for kind, color in (("clean", "tab:blue"), ("perturbed", "tab:red")):
        for curve in result["curves"][kind]:
            ax.plot(t, curve, color=color, alpha=0.15, linewidth=0.8)
        ax.plot(t, result["mean"][kind], color=color, linewidth=2, label=f"{kind} (mean)")
    ax.axvline(result["at"], color="black", linestyle="--", linewidth=1)
    test = result["test"]
    ax.set_title(f"{result['env']}: {result['perturbation']} at step {result['at']} "
                 f"(paired t-test p = {test['p']:.2g})", fontsize=10)
    ax.set_xlabel("model step (frameskip env steps)")
    ax.set_ylabel("surprise ‖ẑ − z‖²")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_rollout_error(result: Mapping, path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(result["horizons"], result["model"], marker="o", label="LeWM rollout")
    ax.plot(result["horizons"], result["copy_last"], marker="s", label="copy last embedding")
    ax.set_xlabel("horizon (model steps)")
    ax.set_ylabel("latent MSE")
    ax.set_title(f"{result['env']}: open-loop rollout error ({result['starts']} starts)",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
