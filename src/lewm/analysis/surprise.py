"""Violation of expectation (PROTOCOL.md §6): is the model surprised by impossible events?

Each trial rolls the data policy twice from the same seed, once untouched and once with a
perturbation applied just before frame ``at``: a teleport (physically impossible) or a
colour change (visually new, physically nothing). Surprise at step t is
‖ẑ_t − z_t‖², the squared distance between the embedding the model predicted from the
real past and the one it then observed. Sharing the seed makes both rollouts identical
until the perturbation, so a paired t-test at that step isolates its effect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import stats

from lewm.checkpoint import Checkpoint
from lewm.data import pixels_tensor
from lewm.envs import get_env_spec

PERTURBATIONS = ("teleport", "color")
# The perturbed agent's colour: far from the data's red in every channel.
NEW_COLOR = (0, 90, 255)
TELEPORT_CANDIDATES = 8


def _teleport(env: Any, spec: Any, seed: int, resolution: int) -> None:
    """Move to another valid state: the farthest of a few start states the environment's own
    reset draws, so the destination is always reachable-looking but clearly elsewhere."""
    scratch = spec.make(resolution)
    here = np.asarray(env.get_state(), dtype=np.float64)
    candidates = []
    for k in range(TELEPORT_CANDIDATES):
        _, info = scratch.reset(seed=seed * TELEPORT_CANDIDATES + k)
        candidates.append(spec.state_of(info))
    far = max(candidates, key=lambda c: float(np.linalg.norm(c - here)))
    env.set_state(far)


def _recolor(env: Any, spec: Any, seed: int, resolution: int) -> None:
    if not hasattr(env, "agent_color"):
        raise ValueError(f"environment {spec.name!r} has no colour hook (agent_color)")
    env.agent_color = NEW_COLOR


def perturbation(name: str) -> Callable[[Any, Any, int, int], None]:
    hooks = {"teleport": _teleport, "color": _recolor}
    if name not in hooks:
        raise ValueError(f"unknown perturbation {name!r}; choose one of: {', '.join(hooks)}")
    return hooks[name]


def roll_policy(
    ckpt: Checkpoint, seed: int, steps: int, at: int | None, perturb: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (steps+1, H, W, 3) and normalized blocks (steps, block_dim) of one rollout.

    Every random draw (start, goal, policy noise) comes from ``seed``, so two calls that
    differ only in ``perturb`` agree on everything before frame ``at``.
    """
    cfg = ckpt.config
    spec = get_env_spec(cfg.env)
    env = spec.make(cfg.model.image_size, render=cfg.data.render)  # as the model saw
    env.reset(seed=seed)
    policy = spec.make_policy(env, np.random.default_rng(seed))
    frames, raw = [env.render()], []
    for t in range(1, steps + 1):
        for _ in range(cfg.model.frameskip):
            action = policy()
            env.step(action)
            raw.append(action)
        if perturb is not None and t == at:
            perturbation(perturb)(env, spec, seed, cfg.model.image_size)
        frames.append(env.render())
    blocks = ckpt.normalizer.transform("action", np.stack(raw)).reshape(steps, -1)
    return np.stack(frames), blocks.astype(np.float32)


@torch.inference_mode()
def surprise_curve(model: Any, frames: np.ndarray, blocks: np.ndarray, history: int) -> np.ndarray:
    """‖ẑ_t − z_t‖² for t = history … T-1, each ẑ_t predicted from the ``history`` real
    embeddings and blocks before it (earlier frames have no full context)."""
    device = model.pixel_mean.device
    z = model.encode(pixels_tensor(frames).to(device)).float()
    b = torch.from_numpy(blocks).to(device)
    starts = range(0, z.shape[0] - history)
    ctx = torch.stack([z[s : s + history] for s in starts])
    ctx_blocks = torch.stack([b[s : s + history] for s in starts])
    pred = model.predict(ctx, ctx_blocks)[:, -1].float()
    return ((pred - z[history:]) ** 2).sum(-1).cpu().numpy()


def paired_test(perturbed: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """One-sided paired t-test that perturbed surprise exceeds clean surprise.

    One-sided because the question is whether the event raises surprise. Identical samples
    (no effect at all) have no defined t statistic and count as p = 1.
    """
    diff = np.asarray(perturbed, dtype=np.float64) - np.asarray(clean, dtype=np.float64)
    if diff.size < 2:
        raise ValueError("the paired t-test needs at least 2 trajectories")
    if np.allclose(diff, diff[0]) and diff[0] == 0:
        return {"t": 0.0, "p": 1.0, "mean_diff": 0.0}
    res = stats.ttest_rel(perturbed, clean, alternative="greater")
    return {"t": float(res.statistic), "p": float(res.pvalue), "mean_diff": float(diff.mean())}


def run_surprise(
    ckpt: Checkpoint,
    perturb: str = "teleport",
    trajectories: int = 20,
    steps: int = 12,
    at: int | None = None,
    seed: int = 0,
) -> dict:
    """Surprise curves of ``trajectories`` paired rollouts and the t-test at step ``at``."""
    perturbation(perturb)
    history = ckpt.config.model.history
    at = steps // 2 if at is None else at
    if not history <= at <= steps:
        raise ValueError(f"--at must lie in [{history}, {steps}] (history .. steps), got {at}")
    if trajectories < 2:
        raise ValueError(f"--trajectories must be >= 2 for a paired test, got {trajectories}")
    curves: dict[str, list[list[float]]] = {"clean": [], "perturbed": []}
    for i in range(trajectories):
        for kind, p in (("clean", None), ("perturbed", perturb)):
            frames, blocks = roll_policy(ckpt, seed + i, steps, at, p)
            curves[kind].append(surprise_curve(ckpt.model, frames, blocks, history).tolist())
    clean, pert = np.asarray(curves["clean"]), np.asarray(curves["perturbed"])
    return {
        "env": ckpt.config.env,
        "perturbation": perturb,
        "at": at,
        "t": list(range(history, steps + 1)),
        "trajectories": trajectories,
        "seed": seed,
        "test": paired_test(pert[:, at - history], clean[:, at - history]),
        "mean": {"clean": clean.mean(0).tolist(), "perturbed": pert.mean(0).tolist()},
        "curves": curves,
    }
