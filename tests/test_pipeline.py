"""End to end: collect -> train -> resume -> evaluate, through the library and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL
from typer.testing import CliRunner

from lewm.checkpoint import CheckpointError, load_checkpoint
from lewm.cli import app
from lewm.config import resolve
from lewm.device import train_precision
from lewm.train.fit import train

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tworoom_file):
    run = tmp_path_factory.mktemp("run")
    cfg = resolve("tiny", SMALL_MODEL, {"train.max_steps": 4})
    summary = train(tworoom_file, run, cfg, device="cpu", progress=False)
    assert summary["steps"] == 4
    return run


def test_run_folder_is_self_describing(trained_run):
    for name in ("model.safetensors", "config.json", "normalizer.json", "train_summary.json",
                 "checkpoints/last.ckpt", "logs/version_0/metrics.csv"):
        assert (trained_run / name).is_file(), name
    metrics = (trained_run / "logs/version_0/metrics.csv").read_text()
    for column in ("train/pred_loss", "train/sigreg", "train/emb_rank", "val/copy_last"):
        assert column in metrics


def test_checkpoint_round_trip_gives_identical_outputs(trained_run, tworoom_file):
    a = load_checkpoint(trained_run).model
    b = load_checkpoint(trained_run).model
    pixels = torch.randint(0, 255, (2, 1, 3, 64, 64), dtype=torch.uint8)
    blocks = torch.randn(2, 5, a.cfg.block_dim)
    with torch.no_grad():
        za, zb = a.encode(pixels), b.encode(pixels)
        assert torch.equal(za, zb)
        assert torch.equal(a.rollout(za, blocks), b.rollout(zb, blocks))


def test_rerun_resumes_and_continues_step_count(tmp_path, tworoom_file):
    cfg = resolve("tiny", SMALL_MODEL, {"train.max_steps": 2, "train.precision": "auto"})
    train(tworoom_file, tmp_path, cfg, device="cpu", progress=False)
    # The saved config says what auto resolved to on this machine, not "auto".
    saved = json.loads((tmp_path / "config.json").read_text())["train"]["precision"]
    assert saved == train_precision("auto", torch.device("cpu"))
    assert saved in ("32-true", "bf16-mixed")
    cfg = resolve("tiny", SMALL_MODEL, {"train.max_steps": 4})
    summary = train(tworoom_file, tmp_path, cfg, device="cpu", progress=False)
    assert summary["steps"] == 4
    assert summary["steps_this_call"] == 2


def test_resume_with_other_model_config_is_refused(tmp_path, tworoom_file):
    train(tworoom_file, tmp_path, resolve("tiny", SMALL_MODEL, {"train.max_steps": 1}),
          device="cpu", progress=False)
    other = resolve("tiny", [*SMALL_MODEL, "model.pred_depth=2"], {"train.max_steps": 1})
    with pytest.raises(ValueError, match="different configuration"):
        train(tworoom_file, tmp_path, other, device="cpu", progress=False)


def test_cli_eval_writes_results_and_gifs(trained_run, tworoom_file):
    result = runner.invoke(app, [
        "eval", str(trained_run), "--data", str(tworoom_file), "--episodes", "2", "--seed", "3",
        "--device", "cpu", "--no-progress", "plan.samples=16", "plan.elites=4",
        "plan.iterations=2",
    ])
    assert result.exit_code == 0, result.output
    out = json.loads((trained_run / "eval" / "cem_seed3" / "result.json").read_text())
    assert 0.0 <= out["success_rate"] <= 1.0
    assert len(out["episodes"]) == 2
    assert out["plan_seconds_mean"] > 0
    assert all(1 <= e["plans"] <= 2 for e in out["episodes"])
    gifs = list((trained_run / "eval" / "cem_seed3").glob("*.gif"))
    assert len(gifs) == 2


def test_eval_is_deterministic_for_a_seed(trained_run, tworoom_file):
    args = ["eval", str(trained_run), "--data", str(tworoom_file), "--episodes", "2",
            "--device", "cpu", "--no-progress", "--solver", "random"]
    names = []
    for name in ("r1", "r2"):
        assert runner.invoke(app, [*args, "--name", name]).exit_code == 0
        names.append(json.loads((trained_run / "eval" / name / "result.json").read_text()))
    assert names[0]["episodes"] == names[1]["episodes"]


def test_eval_refuses_data_of_another_resolution(trained_run, tmp_path):
    from lewm.data import collect

    other = tmp_path / "small.h5"
    collect("tworoom", 3, other, resolution=32, seed=0, progress=False)
    result = runner.invoke(app, ["eval", str(trained_run), "--data", str(other),
                                 "--episodes", "1", "--no-progress"])
    assert result.exit_code == 2
    assert "64x64" in result.output and "32x32" in result.output


def test_eval_refuses_data_of_another_environment_or_action_size(trained_run, tmp_path):
    from lewm.data import EpisodeStore, collect
    from lewm.interop import write_official_layout

    pusht = collect("pusht", 2, tmp_path / "pusht.h5", resolution=64, seed=0, progress=False)
    with EpisodeStore(pusht) as store:
        columns = {name: store.read(name, slice(None)) for name in store.columns}
        columns |= {"ep_len": store.ep_len, "ep_offset": store.ep_offset}
    columns["action"] = np.zeros((len(columns["action"]), 5), dtype=np.float32)
    wide = write_official_layout(tmp_path / "wide.h5", columns)  # no env attribute
    before = sorted((trained_run / "eval").rglob("*")) if (trained_run / "eval").exists() else []
    for data, expected in ((pusht, "trained on tworoom but"), (wide, "plans 2-D actions")):
        result = runner.invoke(app, ["eval", str(trained_run), "--data", str(data),
                                     "--episodes", "1", "--no-progress"])
        assert result.exit_code == 2 and expected in result.output, result.output
    after = sorted((trained_run / "eval").rglob("*")) if (trained_run / "eval").exists() else []
    assert after == before  # earlier results were not overwritten


def test_missing_checkpoint_file_is_named(trained_run, tmp_path):
    (tmp_path / "config.json").write_text((trained_run / "config.json").read_text())
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_checkpoint(tmp_path)


def test_corrupt_weights_are_reported(trained_run, tmp_path):
    for name in ("config.json", "normalizer.json"):
        (tmp_path / name).write_text((trained_run / name).read_text())
    (tmp_path / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path)


def test_planned_actions_are_in_raw_units(trained_run):
    from lewm.config import PlanConfig
    from lewm.plan.mpc import MPCPlanner

    ckpt = load_checkpoint(trained_run)
    planner = MPCPlanner(ckpt.model, ckpt.normalizer, PlanConfig(samples=8, elites=2,
                         iterations=1), 5, 2, torch.device("cpu"))
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    actions, plans = planner.plan(frames, frames, gens)
    assert actions.shape == (3, 25, 2) and actions.dtype == np.float32
    assert plans.shape == (3, 5, 10)
    expected = ckpt.normalizer.inverse("action", plans.reshape(3, 25, 2).numpy())
    np.testing.assert_allclose(actions, expected, rtol=1e-6)


def test_demo_runs_every_stage_and_summarises(tmp_path):
    from lewm.recipes import run_recipe

    fast = [*SMALL_MODEL, "train.max_steps=2", "plan.samples=16", "plan.elites=4",
            "plan.iterations=2"]
    summary = run_recipe("tworoom", tmp_path, 0, 1, "cpu", 12, 2, fast,
                         summary_name="demo_summary.json")
    stages = [s["stage"] for s in summary["stages"]]
    assert stages[:2] == ["collect", "train"] and stages[-1] == "total"
    assert set(summary["success_rates"]) == {"cem_seed42", "cem_seed43", "random_seed42",
                                             "random_seed43"}
    assert json.loads((tmp_path / "demo_summary.json").read_text())["stages"] == summary["stages"]
    assert list((tmp_path / "run" / "eval" / "cem_seed42").glob("*.gif"))


def test_batched_planning_equals_planning_each_environment(trained_run):
    from lewm.config import PlanConfig
    from lewm.plan.mpc import MPCPlanner

    ckpt = load_checkpoint(trained_run)
    planner = MPCPlanner(ckpt.model, ckpt.normalizer, PlanConfig(samples=16, elites=4,
                         iterations=3), 5, 2, torch.device("cpu"))
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    goals = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    together, _ = planner.plan(obs, goals, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    for i, s in enumerate((5, 6, 7)):
        alone, _ = planner.plan(obs[i : i + 1], goals[i : i + 1],
                                [torch.Generator().manual_seed(s)])
        np.testing.assert_allclose(together[i], alone[0], atol=1e-4)


@pytest.mark.parametrize("solver", ["cem", "icem", "gradient"])
def test_compiled_rollout_plans_as_the_eager_one(trained_run, solver):
    """plan.compile changes the speed only: the same plans, also for iCEM's shrinking
    population (new shapes) and the gradient solver (which keeps the eager rollout)."""
    from torch._dynamo.utils import counters

    from lewm.config import PlanConfig
    from lewm.plan.mpc import MPCPlanner

    ckpt = load_checkpoint(trained_run)
    rng = np.random.default_rng(1)
    obs = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    goals = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    plans, graphs = [], counters["stats"]["unique_graphs"]
    for compiled in (False, True):
        cfg = PlanConfig(solver=solver, samples=16, elites=4, iterations=3, compile=compiled)
        planner = MPCPlanner(ckpt.model, ckpt.normalizer, cfg, 5, 2, torch.device("cpu"))
        assert (planner.compiled_rollout is not None) == (compiled and solver != "gradient")
        plans.append(planner.plan(obs, goals, [torch.Generator().manual_seed(s) for s in (1, 2)]))
    assert (counters["stats"]["unique_graphs"] > graphs) == (solver != "gradient")
    np.testing.assert_allclose(plans[1][0], plans[0][0], atol=1e-5)
    # CEM's one shape is compiled before the plan is timed and reported on its own.
    assert (planner.compile_seconds > 0) == (solver != "gradient")
    if solver == "cem":
        assert planner.call_seconds[0] < planner.compile_seconds


def test_compiled_rollout_freezes_the_weights(trained_run):
    """plan.compile folds the weights into the graph (what lets inductor pack them for its
    matmuls): a weight changed after the first plan is not seen by the compiled rollout."""
    from lewm.plan.mpc import compile_frozen

    model = load_checkpoint(trained_run).model
    z, blocks = torch.randn(4, 1, model.cfg.embed_dim), torch.randn(4, 5, model.cfg.block_dim)
    rollout = compile_frozen(model.rollout)
    with torch.no_grad():
        before = rollout(z, blocks)
        torch.testing.assert_close(before, model.rollout(z, blocks), atol=1e-5, rtol=1e-5)
        model.predictor.transformer.layers[0].attn.to_out[0].weight.mul_(2)
        assert not torch.allclose(model.rollout(z, blocks), before, atol=1e-3)
        torch.testing.assert_close(rollout(z, blocks), before, atol=0, rtol=0)
