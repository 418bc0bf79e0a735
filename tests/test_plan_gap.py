"""``lewm plan-gap``: the plan's predicted cost beside its real one and the dataset's actions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL
from typer.testing import CliRunner

from lewm.analysis.plan_gap import _verdict, run_plan_gap
from lewm.checkpoint import load_checkpoint
from lewm.cli import app
from lewm.config import apply_overrides, resolve
from lewm.data import EpisodeStore, collect
from lewm.plan.evaluate import evaluate_run
from lewm.plan.mpc import frames_to_tensor
from lewm.train.fit import train

FAST_PLAN = ["plan.samples=8", "plan.elites=2", "plan.iterations=2"]


def _checkpoint(run: Path, overrides: list[str] | None = None):
    ckpt = load_checkpoint(run, "cpu")
    apply_overrides(ckpt.config, [*FAST_PLAN, *(overrides or [])])
    return ckpt


def test_replaying_the_datasets_actions_lands_on_the_goal_frame(small_run, tworoom_file):
    """TwoRoom is deterministic: the data's own actions from the start state reach the goal
    state, so its frame is the goal's (real cost 0) and the goal is met; the model's cost of
    those actions is the rollout of their z-scored blocks from the start's embedding, and its
    drift after each block is that rollout's distance to the dataset's frame there."""
    ckpt = _checkpoint(small_run)
    with EpisodeStore(tworoom_file) as store:
        out = run_plan_gap(ckpt, store, pairs=3, seed=0)
        assert out["pairs"] == 3 and out["reached"]["data"] == 1.0
        first = out["per_pair"][0]
        row = first["start_row"]
        assert first["real"]["data"] == pytest.approx(0.0, abs=1e-6)
        assert first["real"]["start"] > 0.0
        frames = store.read("pixels", row + np.arange(0, 26, 5))
        blocks = ckpt.normalizer.transform("action", store.read("action", np.arange(row, row + 25)))
    with torch.no_grad():
        z = ckpt.model.encode(frames_to_tensor(frames, torch.device("cpu")))
        imagined = ckpt.model.rollout(z[:1], torch.from_numpy(blocks.reshape(1, 5, -1)).float())
        expected = ckpt.model.planning_cost(imagined, z[-1:, 0]).item()
        drift = ((imagined[0] - z[1:, 0]) ** 2).sum(-1).numpy()
    assert first["predicted"]["data"] == pytest.approx(expected, rel=1e-4)
    assert first["drift"]["data"] == pytest.approx(drift.tolist(), rel=1e-4, abs=1e-6)
    assert len(first["drift"]["plan"]) == 5 and min(first["drift"]["plan"]) >= 0.0
    assert drift[-1] > drift[0]  # errors compound: the last block is imagined furthest
    median = out["median"]["real"]["data"]
    assert median == pytest.approx(0.0, abs=1e-6) and out["verdict"]


def test_the_pairs_are_the_evaluations_own(small_run, tworoom_file, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    result, _ = evaluate_run(run, overrides=[*FAST_PLAN, "eval.episodes=4"], seed=3,
                             device="cpu", progress=False)
    with EpisodeStore(tworoom_file) as store:
        out = run_plan_gap(_checkpoint(run), store, pairs=4, seed=3)
    assert [p["start_row"] for p in out["per_pair"]] == [e.start_row for e in result.episodes]
    assert out["solved_starts"] == result.solved_starts and out["exclude_solved_starts"]


def test_a_model_that_plans_from_its_past_is_checked_with_the_datasets_past(
    tmp_path, tworoom_file
):
    run = tmp_path / "run"
    cfg = resolve("tiny", [*SMALL_MODEL, "model.history=3"], {"train.max_steps": 2})
    train(tworoom_file, run, cfg, device="cpu", progress=False)
    ckpt = _checkpoint(run, ["plan.history=3"])
    with EpisodeStore(tworoom_file) as store:
        out = run_plan_gap(ckpt, store, pairs=2, seed=1)
    assert out["plan"]["history"] == 3 and out["reached"]["data"] == 1.0


@pytest.mark.parametrize("solver", ["gradient", "icem"])
def test_plan_gap_runs_under_every_solver_the_gradient_one_too(small_run, tworoom_file, solver):
    ckpt = _checkpoint(small_run, [f"plan.solver={solver}"])
    with EpisodeStore(tworoom_file) as store:
        out = run_plan_gap(ckpt, store, pairs=1, seed=0)
    assert out["plan"]["solver"] == solver and np.isfinite(out["median"]["predicted"]["plan"])


def test_data_of_another_resolution_is_refused_before_any_planning(small_run, tmp_path):
    other = tmp_path / "tworoom32.h5"
    collect("tworoom", 2, other, resolution=32, seed=0, workers=1, progress=False)
    with EpisodeStore(other) as store, pytest.raises(
        ValueError, match=r"the tworoom run: the checkpoint expects 64x64 images but .* 32x32"
    ):
        run_plan_gap(_checkpoint(small_run), store, pairs=1)


def test_a_goal_offset_the_plan_cannot_span_is_refused(small_run, tworoom_file):
    ckpt = _checkpoint(small_run, ["eval.goal_offset=30"])
    with EpisodeStore(tworoom_file) as store, pytest.raises(
        ValueError, match=r"plan.horizon x frameskip = eval.goal_offset, got 5 x 5 = 25"
    ):
        run_plan_gap(ckpt, store, pairs=1)


def _pair(plan: float, data: float, reached: bool) -> dict:
    return {"predicted": {"plan": plan, "data": data}, "reached": {"plan": reached, "data": True}}


def test_the_verdict_names_the_model_the_search_or_neither():
    exploited = [_pair(1.0, 5.0, False), _pair(2.0, 4.0, False), _pair(2.0, 4.0, True)]
    assert _verdict(exploited).startswith(
        "model: the plan scores below the data's own actions in 100% of pairs, yet 33% of "
        "plans reach the goal, 100% of the data's"
    )
    short = [_pair(9.0, 5.0, False), _pair(2.0, 4.0, False), _pair(8.0, 4.0, True)]
    assert _verdict(short).startswith(
        "search: the model scores the data's own actions below the plan in 67% of pairs"
    )
    # 9 of 10 plans reach the goal: within 10 points of the data's actions.
    fine = [_pair(9.0, 5.0, k > 0) for k in range(10)]
    assert _verdict(fine) == "neither: 90% of plans reach the goal, 100% of the data's"


def test_the_command_writes_its_json_and_prints_the_verdict(small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    result = CliRunner().invoke(app, ["plan-gap", str(run), "--pairs", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "analysis" / "plan_gap.json").read_text())
    assert saved["pairs"] == 1 and saved["verdict"].split(":")[0] in result.output
    assert "the dataset's own" in result.output
    drift = " ".join(f"{d:.3f}" for d in saved["median"]["drift"]["data"])
    assert f"imagined vs real after each block, the dataset's own actions: {drift}" in " ".join(
        result.output.split()
    )
    bad = CliRunner().invoke(app, ["plan-gap", str(run), "--pairs", "0"])
    assert bad.exit_code == 2 and "--pairs must be >= 1, got 0" in " ".join(bad.output.split())
