"""The goal-reaching protocol of PROTOCOL.md §1: start and goal 25 steps apart in a dataset
episode, 50 env steps of budget, success at any step, success rate over 50 pairs."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from lewm.checkpoint import CheckpointError, load_checkpoint
from lewm.config import EvalConfig, apply_overrides
from lewm.data import EpisodeStore, split_episodes
from lewm.device import resolve_device
from lewm.envs import get_env_spec
from lewm.io import atomic_write_text
from lewm.plan.mpc import MPCPlanner
from lewm.report.gif import save_gif, side_by_side

# (observation, goal) -> a chunk of raw actions to execute, one row per env step.
Actor = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class EpisodeOutcome:
    index: int
    episode: int
    start_row: int
    success: bool
    steps: int
    plans: int


@dataclass
class EvalResult:
    success_rate: float
    episodes: list[EpisodeOutcome]
    plan_seconds_mean: float | None
    plan_seconds_median: float | None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def sample_start_rows(
    store: EpisodeStore, episodes: np.ndarray, goal_offset: int, count: int, seed: int
) -> np.ndarray:
    """Distinct start rows with a goal ``goal_offset`` rows later in the same episode, drawn
    the way the reference does (``default_rng(seed).choice`` over the valid rows, sorted)."""
    valid = [
        np.arange(store.ep_offset[e], store.ep_offset[e] + store.ep_len[e] - goal_offset)
        for e in episodes
        if store.ep_len[e] > goal_offset
    ]
    rows = np.concatenate(valid) if valid else np.zeros(0, dtype=np.int64)
    if len(rows) < count:
        raise ValueError(
            f"{store.path}: only {len(rows)} start rows have a goal {goal_offset} steps later "
            f"in the chosen episodes; need {count} (lower --episodes or use more data)"
        )
    pick = np.random.default_rng(seed).choice(len(rows), count, replace=False)
    return np.sort(rows[pick])


def run_protocol(
    store: EpisodeStore,
    env_name: str,
    episodes: np.ndarray,
    actor_factory: Callable[[], Actor],
    cfg: EvalConfig,
    seed: int,
    gif_dir: Path | None = None,
    progress: bool = True,
) -> tuple[float, list[EpisodeOutcome]]:
    """Run ``cfg.episodes`` goal-reaching episodes; returns (success rate, outcomes)."""
    spec = get_env_spec(env_name)
    if spec.state_key not in store.columns:
        raise ValueError(
            f"{store.path}: column {spec.state_key!r} is needed to reset {env_name} to the "
            f"dataset's start and goal states; the file has {', '.join(store.columns)}"
        )
    starts = sample_start_rows(store, episodes, cfg.goal_offset, cfg.episodes, seed)
    env = spec.make(store.image_size)
    ep_of_row = np.searchsorted(store.ep_offset, starts, side="right") - 1
    outcomes: list[EpisodeOutcome] = []
    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task("evaluating", total=len(starts))
        for i, (row, ep) in enumerate(zip(starts, ep_of_row, strict=True)):
            goal_row = row + cfg.goal_offset
            state = store.read(spec.state_key, np.array([row, goal_row]))
            pixels = store.read("pixels", np.array([row, goal_row]))
            env.reset(seed=int(seed * 1_000_003 + i), options={
                "state": state[0], "goal_state": state[1],
            })
            observation, goal = pixels[0], pixels[1]
            actor = actor_factory()
            keep_frames = gif_dir is not None and i < cfg.gifs
            frames = [side_by_side(observation, goal)]
            success, steps, plans = False, 0, 0
            while steps < cfg.budget and not success:
                chunk = actor(observation, goal)
                plans += 1
                for action in chunk[: cfg.budget - steps]:
                    _, _, terminated, _, info = env.step(action)
                    steps += 1
                    observation = env.render()
                    if keep_frames:
                        frames.append(side_by_side(observation, goal))
                    if terminated or info["success"]:
                        success = True
                        break
            outcomes.append(EpisodeOutcome(i, int(ep), int(row), success, steps, plans))
            if keep_frames:
                save_gif(frames, gif_dir / f"episode_{i:03d}_{'ok' if success else 'fail'}.gif")
            done = sum(o.success for o in outcomes)
            bar.update(task, advance=1, description=f"evaluating ({done}/{len(outcomes)} reached)")
    rate = sum(o.success for o in outcomes) / len(outcomes)
    return rate, outcomes


def summarise_plan_times(seconds: list[float]) -> tuple[float | None, float | None]:
    if not seconds:
        return None, None
    return statistics.fmean(seconds), statistics.median(seconds)


def random_actor(action_dim: int, chunk: int, rng: np.random.Generator) -> Actor:
    """The floor every planner must beat: uniform actions in the env's [-1, 1] box."""

    def act(observation: np.ndarray, goal: np.ndarray) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, size=(chunk, action_dim)).astype(np.float32)

    return act


SPLITS = ("val", "train", "all")


def split_for_eval(store: EpisodeStore, split: str, val_fraction: float, seed: int) -> np.ndarray:
    """Episodes to draw start states from; ``val`` is the run's own held-out episodes."""
    if split == "all":
        return np.arange(store.num_episodes)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    train, val = split_episodes(store.num_episodes, val_fraction, seed)
    return val if split == "val" else train


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    eval_cfg: EvalConfig | None = None,
    plan_overrides: list[str] | None = None,
    policy: str = "cem",
    seed: int = 42,
    device: str = "auto",
    name: str | None = None,
    progress: bool = True,
) -> tuple[EvalResult, Path]:
    """Evaluate a trained run on the protocol; writes ``RUN_DIR/eval/<name>.json`` and GIFs."""
    torch_device = resolve_device(device)
    ckpt = load_checkpoint(run_dir, torch_device)
    cfg = ckpt.config
    if plan_overrides:
        apply_overrides(cfg, [o if o.startswith("plan.") else f"plan.{o}" for o in plan_overrides])
    eval_cfg = eval_cfg or cfg.eval
    data = data or cfg.data.path
    if not data:
        raise ValueError(f"{run_dir}: no --data given and the run does not name its data file")
    store = EpisodeStore(data, cache="none")
    if store.image_size != cfg.model.image_size:
        raise CheckpointError(
            f"{run_dir}: the checkpoint expects {cfg.model.image_size}x{cfg.model.image_size} "
            f"images but {store.path} holds {store.image_size}x{store.image_size}; evaluate "
            "on data collected at the training resolution"
        )
    env_name = store.env_name or cfg.env
    episodes = split_for_eval(store, eval_cfg.split, cfg.data.val_fraction, cfg.seed)
    m = cfg.model
    planner: MPCPlanner | None = None
    if policy == "cem":
        torch.manual_seed(seed)
        planner = MPCPlanner(
            ckpt.model, ckpt.normalizer, cfg.plan, m.frameskip, m.action_dim, torch_device, seed
        )
        factory: Callable[[], Actor] = lambda: planner.plan  # noqa: E731
    elif policy == "random":
        rng = np.random.default_rng(seed)
        chunk = cfg.plan.receding_horizon * m.frameskip
        factory = lambda: random_actor(m.action_dim, chunk, rng)  # noqa: E731
    else:
        raise ValueError(f"unknown policy {policy!r}; choose one of: cem, random")
    name = name or f"{policy}_seed{seed}"
    out_dir = Path(run_dir) / "eval"
    rate, outcomes = run_protocol(
        store, env_name, episodes, factory, eval_cfg, seed, out_dir / name, progress
    )
    mean, median = summarise_plan_times(planner.plan_seconds if planner else [])
    result = EvalResult(
        success_rate=rate,
        episodes=outcomes,
        plan_seconds_mean=mean,
        plan_seconds_median=median,
        settings={
            "run": str(Path(run_dir).resolve()),
            "data": str(store.path),
            "env": env_name,
            "policy": policy,
            "seed": seed,
            "device": str(torch_device),
            "eval": asdict(eval_cfg),
            "plan": asdict(cfg.plan),
        },
    )
    path = out_dir / f"{name}.json"
    result.save(path)
    return result, path
