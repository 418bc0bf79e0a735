"""The goal-reaching protocol of PROTOCOL.md §1: start and goal 25 steps apart in a dataset
episode, 50 env steps of budget, success at any step, success rate over 50 pairs."""

from __future__ import annotations

import json
import re
import statistics
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from lewm.checkpoint import CheckpointError, load_checkpoint
from lewm.config import EvalConfig, RunConfig, apply_overrides
from lewm.data import EpisodeStore, open_store, split_episodes
from lewm.data.clips import proprio_width
from lewm.data.normalize import join_columns
from lewm.device import keep_freed_memory, resolve_device
from lewm.envs import get_env_spec, proprio_columns
from lewm.io import atomic_folder, atomic_write_text, exclusive, lock_path, remove_stale_parts
from lewm.plan.history import FrameHistory, Past
from lewm.plan.mpc import MPCPlanner, plan_flops
from lewm.plan.solvers import SOLVER_NAMES
from lewm.stats import across_sets, wilson_interval
from lewm.track import log_to_run

# (observations (N,H,W,3), goals (N,H,W,3), episode indices, proprio=None, past=None) -> raw
# actions (N, steps, A); proprio, when the model reads it, is the raw (current, goal) pair,
# (N, P) each; past, with plan.history > 1, each environment's real past (or None).
Actor = Callable[..., np.ndarray]
Proprio = tuple[np.ndarray, np.ndarray]
# (folder, file stem, frames, goal, actions) -> anything: writes one evaluated episode's media
# into folder, as files named stem plus a suffix of the writer's choosing. Frames are the
# episode's rendered observations from its start on, each uint8 (H, W, 3); goal is its goal
# image; actions (len(frames) - 1, action_dim) are the raw actions executed between frames.
# Planning only hands them over: writing them is the report layer's job (plan/ never imports
# report/), e.g. lewm.report.gif.write_episode_gif. The stem, "episode_007_ok", names the
# episode's index in result.json and its outcome.
EpisodeMedia = Callable[[Path, str, list[np.ndarray], np.ndarray, np.ndarray], object]
SPLITS = ("val", "train", "all")
# An evaluation is one folder, RUN/eval/NAME/, holding this file and its GIFs: it is swapped in
# whole, so the JSON and the GIFs beside it always come from the same evaluation.
RESULT = "result.json"
# What several pair seeds of one evaluation say together (see evaluate_seeds); a folder that
# holds it and no RESULT is not itself an evaluation.
SUMMARY = "summary.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_result_name(name: str) -> str:
    """A result name is a plain folder name: never a path that could leave ``RUN/eval/``."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"--name {name!r}: expected a plain name of letters, digits, '.', '_', '+' or '-' "
            "(at most 100, not starting with '.'), not a path"
        )
    return name


@dataclass
class EpisodeOutcome:
    """``steps`` are the env steps taken; ``steps_to_success`` the same for a success and
    None otherwise, so that a reader never averages the budget of failures into it."""

    index: int
    episode: int
    start_row: int
    success: bool
    steps: int
    plans: int
    steps_to_success: int | None = None


@dataclass
class EvalResult:
    """``plan_seconds_*`` time one planning call, which plans ``envs_per_call_mean``
    environments at once; ``plan_seconds_per_env`` is planning time per environment-plan.
    ``plan_flops_*`` count one environment's plan (see :func:`lewm.plan.mpc.plan_flops`).
    With ``plan.compile``, the one-off compiles are in ``compile_seconds``, not in those.
    ``solved_starts`` counts the drawn pairs whose start already satisfied the goal: replaced
    by other pairs with ``eval.exclude_solved_starts`` (the default), evaluated otherwise."""

    success_rate: float
    episodes: list[EpisodeOutcome]
    steps_to_success_median: float | None = None
    solved_starts: int = 0
    plan_seconds_mean: float | None = None
    plan_seconds_median: float | None = None
    plan_seconds_per_env: float | None = None
    plan_flops_per_plan: int | None = None
    plan_flops_per_iteration: int | None = None
    envs_per_call_mean: float | None = None
    compile_seconds: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def episode_seed(seed: int, index: int) -> int:
    """One integer per (evaluation seed, episode), whatever batch the episode runs in."""
    return int(np.random.SeedSequence((seed, index)).generate_state(1)[0])


class PlannerActor:
    """Plans with a world model; each episode has its own noise generator (so batching does
    not change the plans) and remembers its last plan (for warm starts)."""

    def __init__(self, planner: MPCPlanner, seed: int) -> None:
        self.planner = planner
        self.seed = seed
        self.generators: dict[int, torch.Generator] = {}
        self.previous: dict[int, torch.Tensor] = {}

    def __call__(
        self,
        observations: np.ndarray,
        goals: np.ndarray,
        ids: list[int],
        proprio: Proprio | None = None,
        past: list[Past | None] | None = None,
    ) -> np.ndarray:
        """One plan per environment; those with pasts of different lengths are planned in
        separate calls (each episode's own generator keeps its plan the same either way)."""
        for i in ids:
            if i not in self.generators:
                self.generators[i] = torch.Generator().manual_seed(episode_seed(self.seed, i))
        past = past or [None] * len(ids)
        lengths = [0 if p is None else len(p[0]) for p in past]
        out = [np.empty(0, dtype=np.float32)] * len(ids)
        for length in sorted(set(lengths)):
            group = [k for k, n in enumerate(lengths) if n == length]
            group_ids = [ids[k] for k in group]
            previous = None
            if all(i in self.previous for i in group_ids):
                previous = torch.stack([self.previous[i] for i in group_ids])
            pairs = None if proprio is None else (proprio[0][group], proprio[1][group])
            group_past = None
            if length:
                group_past = tuple(np.stack([past[k][j] for k in group]) for j in (0, 1))
            actions, plans = self.planner.plan(
                observations[group], goals[group], [self.generators[i] for i in group_ids],
                previous, pairs, group_past,
            )  # fmt: skip
            self.previous.update(zip(group_ids, plans, strict=True))
            for k, a in zip(group, actions, strict=True):
                out[k] = a
        return np.stack(out)


class RandomActor:
    """The floor every planner must beat: uniform actions in the env's [-1, 1] box."""

    def __init__(self, action_dim: int, chunk: int, seed: int) -> None:
        self.shape = (chunk, action_dim)
        self.seed = seed
        self.rngs: dict[int, np.random.Generator] = {}

    def __call__(
        self,
        observations: np.ndarray,
        goals: np.ndarray,
        ids: list[int],
        proprio: Proprio | None = None,
        past: list[Past | None] | None = None,
    ) -> np.ndarray:
        """Actions that look at nothing: observations, proprioception and past are ignored."""
        for i in ids:
            self.rngs.setdefault(i, np.random.default_rng(episode_seed(self.seed, i)))
        return np.stack(
            [self.rngs[i].uniform(-1.0, 1.0, size=self.shape).astype(np.float32) for i in ids]
        )


def sample_start_rows(
    store: EpisodeStore,
    episodes: np.ndarray,
    goal_offset: int,
    count: int,
    seed: int,
    solved: Callable[[int], bool] | None = None,
    exclude: bool = True,
) -> tuple[np.ndarray, int]:
    """Distinct start rows with a goal ``goal_offset`` rows later in the same episode, drawn
    the way the reference does (``default_rng(seed).choice`` over the valid rows, sorted),
    and how many drawn rows ``solved`` says already satisfy their goal.

    With ``exclude``, each of those is replaced by further draws from the same generator
    among the rows not drawn yet, so that a set without solved starts is the reference's.
    """
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
    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(rows), count, replace=False)
    if solved is None:
        return np.sort(rows[drawn]), 0
    flags = [solved(int(rows[i])) for i in drawn]
    kept = [int(i) for i, done in zip(drawn, flags, strict=True) if not (exclude and done)]
    found = sum(flags)
    unused = np.setdiff1d(np.arange(len(rows)), drawn)
    while len(kept) < count:
        if unused.size == 0:
            raise ValueError(
                f"{store.path}: only {len(kept)} start rows with a goal {goal_offset} steps "
                f"later are not already at their goal; need {count} (lower --episodes, use "
                "more data or set eval.exclude_solved_starts=false)"
            )
        more = rng.choice(unused, min(count - len(kept), unused.size), replace=False)
        unused = np.setdiff1d(unused, more)
        for i in more:
            if solved(int(rows[i])):
                found += 1
            else:
                kept.append(int(i))
    return np.sort(rows[kept]), found


def solved_check(
    env: Any, store: EpisodeStore, env_name: str, goal_offset: int
) -> Callable[[int], bool]:
    """Whether a start row already meets its goal ``goal_offset`` rows later, asked of
    ``env`` (which it resets): what ``sample_start_rows`` needs to leave such pairs out."""
    spec = get_env_spec(env_name)

    def solved(row: int) -> bool:
        state = spec.read_state(store, np.array([row, row + goal_offset]))
        env.reset(options={"state": state[0], "goal_state": state[1]})
        return bool(env.is_success())

    return solved


def run_protocol(
    store: EpisodeStore,
    env_name: str,
    episodes: np.ndarray,
    actor: Actor,
    cfg: EvalConfig,
    seed: int,
    media_dir: Path | None = None,
    progress: bool = True,
    media: EpisodeMedia | None = None,
    proprio_keys: tuple[str, ...] = (),
    render: str = "faithful",
    history: int = 1,
    frameskip: int = 1,
) -> EvalResult:
    """Run ``cfg.episodes`` goal-reaching episodes, ``cfg.batch`` environments in lockstep
    (one planning call per replanning step for all of them); returns their outcomes (the
    planner's timings are the caller's to add).

    With ``media`` and ``media_dir``, the frames of the first ``cfg.gifs`` episodes are
    handed to ``media`` to write into ``media_dir``; without, no frames are kept. With
    ``proprio_keys``, the actor also gets the raw proprioception: the start's and the goal's
    from the dataset rows, then the environment's after each step. With ``history`` > 1 the
    actor also gets each episode's real past, ``frameskip`` steps per frame: at the start the
    dataset rows before the start row (within its episode), then the steps it executed."""
    spec = get_env_spec(env_name)
    spec.require_state_columns(store.columns, store.path)
    if cfg.batch < 1:
        raise ValueError(f"eval.batch must be >= 1, got {cfg.batch}")
    envs = [
        spec.make(store.image_size, render=render) for _ in range(min(cfg.batch, cfg.episodes))
    ]
    starts, solved_starts = sample_start_rows(
        store, episodes, cfg.goal_offset, cfg.episodes, seed,
        solved_check(envs[0], store, env_name, cfg.goal_offset), cfg.exclude_solved_starts,
    )  # fmt: skip
    ep_of_row = np.searchsorted(store.ep_offset, starts, side="right") - 1
    outcomes: list[EpisodeOutcome] = []
    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task("evaluating", total=len(starts))
        for first in range(0, len(starts), cfg.batch):
            ids = list(range(first, min(first + cfg.batch, len(starts))))
            obs, goal, proprio = [], [], []
            pasts = None
            if history > 1:
                pasts = [dataset_past(store, int(starts[i]), history, frameskip) for i in ids]
            for env, i in zip(envs, ids, strict=False):
                rows = np.array([starts[i], starts[i] + cfg.goal_offset])
                state = spec.read_state(store, rows)
                pixels = store.read("pixels", rows)
                env.reset(
                    seed=episode_seed(seed, i), options={"state": state[0], "goal_state": state[1]}
                )
                obs.append(pixels[0])
                goal.append(pixels[1])
                proprio.append(
                    join_columns({k: store.read(k, rows) for k in proprio_keys}, proprio_keys, 2)
                )
            recorder = None if media is None or media_dir is None else (media_dir, media)
            pairs = np.stack(proprio) if proprio_keys else None
            outcomes += _lockstep(envs, ids, np.stack(obs), np.stack(goal), actor, cfg, recorder,
                                  [int(starts[i]) for i in ids], [int(ep_of_row[i]) for i in ids],
                                  pairs, proprio_keys, pasts)
            done = sum(o.success for o in outcomes)
            bar.update(task, advance=len(ids),
                       description=f"evaluating ({done}/{len(outcomes)} reached)")
    steps = [o.steps_to_success for o in outcomes if o.steps_to_success is not None]
    return EvalResult(
        success_rate=sum(o.success for o in outcomes) / len(outcomes),
        episodes=outcomes,
        steps_to_success_median=statistics.median(steps) if steps else None,
        solved_starts=solved_starts,
    )


def _lockstep(
    envs: list[Any], ids: list[int], obs: np.ndarray, goal: np.ndarray, actor: Actor,
    cfg: EvalConfig, recorder: tuple[Path, EpisodeMedia] | None, start_rows: list[int],
    episodes: list[int], proprio: np.ndarray | None = None, proprio_keys: tuple[str, ...] = (),
    pasts: list[FrameHistory] | None = None,
) -> list[EpisodeOutcome]:
    """Episodes ``ids`` from reset to success or budget; a finished environment is frozen
    and leaves the planning batch. ``recorder`` (folder, writer) receives the frames of the
    episodes whose index is below ``cfg.gifs``. ``proprio`` (N, 2, P) holds each episode's
    current and goal proprioception; the current one follows the environment's ``info``.
    Success counts at any step, the start included (a solved start kept by
    ``eval.exclude_solved_starts=false`` succeeds in 0 steps). ``pasts`` holds each episode's
    history, its current frame observed last; the actor then gets their pasts."""
    steps, plans = [0] * len(ids), [0] * len(ids)
    success = [bool(envs[k].is_success()) for k in range(len(ids))]
    # Copies: obs is overwritten in place step by step.
    frames = {
        k: [obs[k].copy()] for k, i in enumerate(ids) if recorder is not None and i < cfg.gifs
    }
    actions: dict[int, list[np.ndarray]] = {k: [] for k in frames}
    while active := [k for k in range(len(ids)) if not success[k] and steps[k] < cfg.budget]:
        pairs = None if proprio is None else (proprio[active, 0], proprio[active, 1])
        known = None if pasts is None else [pasts[k].past() for k in active]
        chunks = actor(
            obs[active], goal[active], [ids[k] for k in active], proprio=pairs, past=known
        )
        for k, chunk in zip(active, chunks, strict=True):
            plans[k] += 1
            for action in chunk[: cfg.budget - steps[k]]:
                _, _, terminated, _, info = envs[k].step(action)
                steps[k] += 1
                obs[k] = envs[k].render()
                if pasts is not None:
                    pasts[k].act(action)
                    pasts[k].observe(obs[k])
                if proprio is not None:
                    proprio[k, 0] = join_columns(info, proprio_keys, 1)[0]
                if k in frames:
                    frames[k].append(obs[k].copy())
                    actions[k].append(np.asarray(action, dtype=np.float32))
                if terminated or info["success"]:
                    success[k] = True
                    break
    if recorder is not None:
        folder, media = recorder
        for k, kept in frames.items():
            tag = "ok" if success[k] else "fail"
            taken = np.stack(actions[k]) if actions[k] else np.zeros(
                (0, *envs[k].action_space.shape), dtype=np.float32
            )
            media(folder, f"episode_{ids[k]:03d}_{tag}", kept, goal[k].copy(), taken)
    return [
        EpisodeOutcome(i, episodes[k], start_rows[k], success[k], steps[k], plans[k],
                       steps[k] if success[k] else None)
        for k, i in enumerate(ids)
    ]


def dataset_past(store: EpisodeStore, start: int, history: int, frameskip: int) -> FrameHistory:
    """A history that starts where the dataset's episode stood: the rows before ``start``
    (as many as the history holds and the episode has), then the start frame itself."""
    past = FrameHistory(history, frameskip)
    first = int(store.ep_offset[np.searchsorted(store.ep_offset, start, side="right") - 1])
    rows = np.arange(max(first, start - past.steps), start + 1)
    pixels = store.read("pixels", rows)
    actions = store.read("action", rows[:-1]) if len(rows) > 1 else []
    for frame, action in zip(pixels[:-1], actions, strict=True):
        past.observe(frame)
        past.act(action)
    past.observe(pixels[-1])
    return past


def check_eval_data(cfg: RunConfig, store: EpisodeStore, source: object) -> None:
    """Refuse, naming ``source`` (the run), a data file the run cannot be evaluated on: other
    resolution, environment or action size, or states that cannot be restored (checked
    whole, before anything is written)."""
    if store.image_size != cfg.model.image_size:
        raise CheckpointError(
            f"{source}: the checkpoint expects {cfg.model.image_size}x{cfg.model.image_size} "
            f"images but {store.path} holds {store.image_size}x{store.image_size}; evaluate "
            "on data collected at the training resolution"
        )
    if store.env_name and store.env_name != cfg.env:
        raise CheckpointError(
            f"{source}: the run was trained on {cfg.env} but {store.path} holds "
            f"{store.env_name} episodes; evaluate on data of the run's environment"
        )
    if store.action_dim != cfg.model.action_dim:
        raise CheckpointError(
            f"{source}: the checkpoint plans {cfg.model.action_dim}-D actions but "
            f"{store.path} holds {store.action_dim}-D ones"
        )
    spec = get_env_spec(cfg.env)
    spec.require_state_columns(store.columns, store.path)
    store.require_finite(spec.state_keys)


def render_mode(cfg: RunConfig, store: EpisodeStore) -> str:
    """How the environment is drawn: ``eval.render``, else as the training data was. Goals
    are the data file's frames and the model learnt from the training file's, so a mode
    unlike either is allowed but warned about, naming both."""
    mode = cfg.eval.render or cfg.data.render
    for what, theirs in (("the training data", cfg.data.render), (str(store.path), store.render)):
        if theirs != mode:
            warnings.warn(
                f"the environment renders {mode!r} but {what} was rendered {theirs!r}: "
                "observations will not look like the frames the model saw (eval.render / "
                "--render chooses)",
                stacklevel=3,
            )
    return mode


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
    overrides: list[str] | None = None,
    solver: str | None = None,
    seed: int = 42,
    device: str = "auto",
    name: str | None = None,
    progress: bool = True,
    media: EpisodeMedia | None = None,
) -> tuple[EvalResult, Path]:
    """Evaluate a trained run on the protocol; writes ``RUN_DIR/eval/<name>/`` (the JSON,
    and the episodes' media when ``media`` is given).

    ``solver`` is one of the planning solvers, or ``random`` for the no-model floor;
    ``None`` keeps the run's ``plan.solver``. ``eval_cfg`` replaces the run's saved eval
    section (``None`` starts from it). ``overrides`` are ``key=value`` for the ``eval.`` and
    ``plan.`` sections; a bare key is the section's that has the field. Returns the result and
    the path of its JSON, ``RUN_DIR/eval/<name>/result.json``. Two evaluations of one name at
    once are refused; an interrupted one leaves the previous result of that name as it was.

    ``media`` writes the first ``eval.gifs`` episodes' frames into the result folder (see
    :data:`EpisodeMedia`); pass ``lewm.report.gif.write_episode_gif`` for the GIFs that
    ``lewm eval`` writes. Planning does not write media itself (``plan/`` never imports
    ``report/``), so **without ``media`` no GIFs are written**, and the result records
    ``eval.gifs`` as 0 so that it describes its folder.
    """
    if name is not None:
        check_result_name(name)
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        keep_freed_memory()
    ckpt = load_checkpoint(run_dir, torch_device)
    cfg = ckpt.config
    if eval_cfg is not None:
        cfg.eval = eval_cfg
    if solver not in (None, "random"):
        cfg.plan.solver = solver  # before the overrides: their check depends on the solver
    apply_overrides(cfg, [_section(o) for o in overrides or []])
    solver = solver or cfg.plan.solver
    if solver not in (*SOLVER_NAMES, "random"):
        raise ValueError(
            f"unknown solver {solver!r}; choose one of: {', '.join(SOLVER_NAMES)}, random"
        )
    eval_cfg = cfg.eval if media is not None else replace(cfg.eval, gifs=0)
    data = data or cfg.data.path
    if not data:
        raise ValueError(f"{run_dir}: no --data given and the run does not name its data file")
    store = open_store(data, cache="none")
    check_eval_data(cfg, store, run_dir)
    render = render_mode(cfg, store)
    episodes = split_for_eval(store, eval_cfg.split, cfg.data.val_fraction, cfg.seed)
    m = cfg.model
    proprio_keys = proprio_columns(cfg)
    if proprio_keys:
        width = proprio_width(store, proprio_keys)
        if width != m.proprio_dim:
            raise CheckpointError(
                f"{run_dir}: the checkpoint reads {m.proprio_dim} proprioception values but "
                f"{store.path} holds {width} in {', '.join(proprio_keys)}"
            )
        store.require_finite(proprio_keys)
    planner: MPCPlanner | None = None
    actor: Actor
    if solver == "random":
        actor = RandomActor(m.action_dim, cfg.plan.receding_horizon * m.frameskip, seed)
    else:
        planner = MPCPlanner(
            ckpt.model, ckpt.normalizer, cfg.plan, m.frameskip, m.action_dim, torch_device,
            proprio_keys,
        )  # fmt: skip
        actor = PlannerActor(planner, seed)
    target = Path(run_dir) / "eval" / (name or f"{solver}_seed{seed}")
    with exclusive(lock_path(target), f"evaluation {target}"):
        remove_stale_parts(target)
        with atomic_folder(target, replace=True) as staging:
            # The media go into the staging folder: they appear with their JSON or not at all.
            result = run_protocol(
                store, cfg.env, episodes, actor, eval_cfg, seed, staging, progress, media,
                proprio_keys, render, cfg.plan.history if planner else 1, m.frameskip,
            )  # fmt: skip
            if planner is not None:
                _add_timings(result, planner)
                flops = plan_flops(ckpt.model, m.image_size, cfg.plan, m.block_dim, torch_device)
                result.plan_flops_per_plan = flops["plan"]
                result.plan_flops_per_iteration = flops["iteration"]
            result.settings = {
                "run": str(Path(run_dir).resolve()),
                "data": str(store.path),
                "env": cfg.env,
                "render": render,
                "model": {"kind": m.kind, "note": m.note},
                "solver": solver,
                "seed": seed,
                "device": str(torch_device),
                "eval": asdict(eval_cfg),
                "plan": asdict(cfg.plan),
                "media": getattr(media, "layout", "real | goal") if media else None,
            }
            result.save(staging / RESULT)
    log_to_run(run_dir, _tracked(result, target.name), [target / RESULT], f"eval/{target.name}")
    return result, target / RESULT


def _tracked(result: EvalResult, name: str) -> dict[str, float]:
    """What a tracker shows of one evaluation: the rate with its interval, steps, timings."""
    n = len(result.episodes)
    successes = sum(e.success for e in result.episodes)
    low, high = wilson_interval(successes, n) if n else (0.0, 0.0)
    values = {
        "success_rate": result.success_rate, "wilson95_low": low, "wilson95_high": high,
        "solved_starts": result.solved_starts,
        "steps_to_success_median": result.steps_to_success_median,
        "plan_seconds_per_env": result.plan_seconds_per_env,
    }  # fmt: skip
    return {f"eval/{name}/{k}": float(v) for k, v in values.items() if v is not None}


_EVAL_FIELDS = frozenset(f.name for f in fields(EvalConfig))


def _section(override: str) -> str:
    """``budget=10`` → ``eval.budget=10``, ``samples=8`` → ``plan.samples=8``: evaluation
    overrides never reach the model or training sections."""
    if override.startswith(("plan.", "eval.")):
        return override
    key = override.split("=", 1)[0].strip()
    return f"eval.{override}" if key in _EVAL_FIELDS else f"plan.{override}"


def evaluate_seeds(
    run_dir: str | Path, seeds: list[int], name: str | None = None, **kwargs: Any
) -> tuple[list[tuple[EvalResult, Path]], dict[str, Any], Path | None]:
    """One evaluation per pair seed (``RUN/eval/<name>_seed<S>/`` or the default names),
    then what they say together (:func:`lewm.stats.across_sets`), written to
    ``RUN/eval/<name or solver>_seeds<first>-<last>/summary.json`` when there are several.
    ``kwargs`` go to :func:`evaluate_run`."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds}: expected one or more distinct pair seeds")
    runs = []
    for seed in seeds:
        label = name if name is None or len(seeds) == 1 else f"{name}_seed{seed}"
        runs.append(evaluate_run(run_dir, seed=seed, name=label, **kwargs))
    if len(seeds) == 1:
        return runs, {}, None
    counts = [(sum(e.success for e in r.episodes), len(r.episodes)) for r, _ in runs]
    summary = {
        "seeds": seeds,
        "per_seed": [
            {"seed": seed, "successes": s, "episodes": n, "rate": s / n,
             "wilson95": list(wilson_interval(s, n)), "result": str(path),
             "steps_to_success_median": r.steps_to_success_median,
             "solved_starts": r.solved_starts}
            for seed, (s, n), (r, path) in zip(seeds, counts, runs, strict=True)
        ],
        **across_sets(counts),
        "settings": {k: v for k, v in runs[0][0].settings.items() if k != "seed"},
    }  # fmt: skip
    base = name or runs[0][0].settings["solver"]
    folder = Path(run_dir) / "eval" / check_result_name(f"{base}_seeds{seeds[0]}-{seeds[-1]}")
    folder.mkdir(exist_ok=True)
    atomic_write_text(folder / SUMMARY, json.dumps(summary, indent=2))
    low, high = summary["mean_t95"]
    log_to_run(run_dir, {
        f"eval/{folder.name}/mean_rate": summary["mean_rate"],
        f"eval/{folder.name}/mean_t95_low": low, f"eval/{folder.name}/mean_t95_high": high,
    }, [folder / SUMMARY], f"eval/{folder.name}")  # fmt: skip
    return runs, summary, folder / SUMMARY


def _add_timings(result: EvalResult, planner: MPCPlanner) -> None:
    """The planner's timings (the random floor has none). An evaluation whose every start
    was already solved never planned, and has no timings either."""
    calls, sizes = planner.call_seconds, planner.call_sizes
    if not calls:
        return
    result.plan_seconds_mean = statistics.fmean(calls)
    result.plan_seconds_median = statistics.median(calls)
    result.plan_seconds_per_env = sum(calls) / sum(sizes)
    result.envs_per_call_mean = statistics.fmean(sizes)
    if planner.compiled_rollout is not None:
        result.compile_seconds = planner.compile_seconds
