"""Is it the model or the search? What the planner believes its plan does, beside the truth.

A planner fails for one of two reasons: the search does not find the actions its model
scores best, or the model scores well actions that do not work. Every evaluation pair
carries a witness that tells the two apart: the dataset's own actions, which led from the
start to the goal. So for each pair this sets side by side

- the model's cost of the plan and of the data's actions (what a perfect search must beat);
- the real cost of each, the same distance taken from the frame the environment reaches
  when it executes them (open loop, all ``plan.horizon`` blocks, as the protocol's first
  plan is executed), and whether they reach the goal.

A plan the model scores below the data's own actions that then reaches the goal less often
than they do is the model being exploited: more search makes that worse, not better.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import torch

from lewm.checkpoint import Checkpoint
from lewm.data import EpisodeStore
from lewm.envs import get_env_spec, proprio_columns
from lewm.model.protocol import model_device
from lewm.plan.evaluate import (
    check_eval_data,
    dataset_past,
    episode_seed,
    render_mode,
    sample_start_rows,
    solved_check,
    split_for_eval,
)
from lewm.plan.mpc import MPCPlanner, frames_to_tensor

KINDS = ("plan", "data")


def _execute(
    env: Any, start: np.ndarray, goal: np.ndarray, actions: np.ndarray, frameskip: int
) -> tuple[bool, list[np.ndarray]]:
    """Run ``actions`` from ``start``; whether the goal was met at any step, and the frame
    after each block (the embeddings the model imagines are of those frames)."""
    env.reset(options={"state": start, "goal_state": goal})
    reached = bool(env.is_success())
    frames = []
    for step, action in enumerate(actions, 1):
        _, _, terminated, _, info = env.step(action)
        reached = reached or bool(terminated or info["success"])
        if step % frameskip == 0:
            frames.append(env.render().copy())
    return reached, frames


def _verdict(pairs: list[dict[str, Any]]) -> str:
    """One sentence a reader acts on. A plan that reaches the goal about as often as the
    data's own actions (within 10 points) leaves nothing to mend; otherwise the share of
    pairs whose plan the model scores below the data's actions says which part fails."""
    below = float(np.mean([p["predicted"]["plan"] < p["predicted"]["data"] for p in pairs]))
    reached = {k: float(np.mean([p["reached"][k] for p in pairs])) for k in KINDS}
    rates = f"{reached['plan']:.0%} of plans reach the goal, {reached['data']:.0%} of the data's"
    if reached["plan"] >= reached["data"] - 0.1:
        return f"neither: {rates}"
    if below >= 0.5:
        return (
            f"model: the plan scores below the data's own actions in {below:.0%} of pairs, "
            f"yet {rates}; the search exploits the model's errors, so more data, training or "
            "history help, more search does not"
        )
    return (
        f"search: the model scores the data's own actions below the plan in {1 - below:.0%} "
        f"of pairs and {rates}; more samples or iterations, or another solver, help"
    )


@torch.no_grad()
def run_plan_gap(ckpt: Checkpoint, store: EpisodeStore, pairs: int = 20, seed: int = 42) -> dict:
    """The plan and the dataset's actions of ``pairs`` evaluation pairs, scored by the model
    and by the world. The pairs are drawn as ``lewm eval --seed`` draws them (solved
    starts replaced under ``eval.exclude_solved_starts``): with ``pairs`` equal to its
    ``eval.episodes``, they are its pairs and the plan is its first one."""
    cfg = ckpt.config
    frameskip, horizon, offset = cfg.model.frameskip, cfg.plan.horizon, cfg.eval.goal_offset
    if proprio_columns(cfg):
        raise ValueError(
            f"plan-gap compares frames; this {cfg.model.kind} model also reads "
            f"proprioception ({', '.join(proprio_columns(cfg))})"
        )
    if horizon * frameskip != offset:
        raise ValueError(
            f"plan-gap sets the plan beside the dataset's {offset} actions from start to goal: "
            f"it needs plan.horizon x frameskip = eval.goal_offset, got {horizon} x "
            f"{frameskip} = {horizon * frameskip}"
        )
    if pairs < 1:
        raise ValueError(f"--pairs must be >= 1, got {pairs}")
    check_eval_data(cfg, store, f"the {cfg.env} run")
    spec = get_env_spec(cfg.env)
    env = spec.make(store.image_size, render=render_mode(cfg, store))
    episodes = split_for_eval(store, cfg.eval.split, cfg.data.val_fraction, cfg.seed)
    starts, solved_starts = sample_start_rows(
        store, episodes, offset, pairs, seed, solved_check(env, store, cfg.env, offset),
        cfg.eval.exclude_solved_starts,
    )  # fmt: skip
    model, normalizer = ckpt.model, ckpt.normalizer
    device = model_device(model)
    planner = MPCPlanner(model, normalizer, cfg.plan, frameskip, cfg.model.action_dim, device)
    out = []
    for i, row in enumerate(int(r) for r in starts):
        rows = np.array([row, row + offset])
        frames, states = store.read("pixels", rows), spec.read_state(store, rows)
        past = None
        if cfg.plan.history > 1:
            known = dataset_past(store, row, cfg.plan.history, frameskip).past()
            past = None if known is None else tuple(x[None] for x in known)
        generator = torch.Generator().manual_seed(episode_seed(seed, i))
        _, plan = planner.plan(frames[:1], frames[1:], [generator], past=past)
        data = store.read("action", np.arange(row, row + offset))
        blocks = normalizer.transform("action", data).reshape(plan.shape).astype(np.float32)
        candidates = torch.cat([plan.float().cpu(), torch.from_numpy(blocks)])[None]
        imagined, predicted = planner.imagine(frames[:1], frames[1:], candidates, past=past)
        raw_plan = normalizer.inverse("action", plan.float().cpu().numpy().reshape(len(data), -1))
        reached, after = zip(
            *(_execute(env, states[0], states[1], a, frameskip) for a in (raw_plan, data)),
            strict=True,
        )
        z = model.encode(frames_to_tensor(np.stack([*after[0], *after[1], *frames]), device))
        z_after = z[: 2 * horizon, 0].view(2, horizon, -1)
        z_start, z_goal = z[2 * horizon :, 0]
        last = torch.stack([z_start, z_after[0, -1], z_after[1, -1]])[:, None]
        real = model.planning_cost(last, z_goal.expand(3, -1)).float().cpu().tolist()
        drift = ((imagined[0].float() - z_after.float()) ** 2).sum(-1).cpu().tolist()
        out.append({
            "start_row": row,
            "predicted": dict(zip(KINDS, predicted[0].float().cpu().tolist(), strict=True)),
            "real": {"plan": real[1], "data": real[2], "start": real[0]},
            "drift": dict(zip(KINDS, drift, strict=True)),
            "reached": dict(zip(KINDS, reached, strict=True)),
        })
    return {
        "env": cfg.env,
        "data": str(store.path),
        "seed": seed,
        "pairs": len(out),
        "solved_starts": solved_starts,
        "exclude_solved_starts": cfg.eval.exclude_solved_starts,
        "plan": {"solver": cfg.plan.solver, "horizon": horizon, "history": cfg.plan.history},
        "median": {
            "predicted": {k: statistics.median(p["predicted"][k] for p in out) for k in KINDS},
            "real": {k: statistics.median(p["real"][k] for p in out)
                     for k in (*KINDS, "start")},  # fmt: skip
            "drift": {k: np.median([p["drift"][k] for p in out], axis=0).tolist()
                      for k in KINDS},  # fmt: skip
        },
        "plan_scored_below_data": float(
            np.mean([p["predicted"]["plan"] < p["predicted"]["data"] for p in out])
        ),
        "reached": {k: float(np.mean([p["reached"][k] for p in out])) for k in KINDS},
        "verdict": _verdict(out),
        "per_pair": out,
    }
