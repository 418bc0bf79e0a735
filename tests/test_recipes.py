"""`lewm recipe`: each task's data, training and evaluation from one command, resumable."""

from __future__ import annotations

import json

import h5py
from conftest import SMALL_MODEL
from typer.testing import CliRunner

from lewm.cli import app
from lewm.config import resolve
from lewm.recipes import RECIPES

runner = CliRunner()
QUICK = [*SMALL_MODEL, "train.max_steps=2", "train.batch_size=8", "plan.samples=16",
         "plan.elites=4", "plan.iterations=2"]


def test_recipes_are_listed_with_what_they_measured():
    result = runner.invoke(app, ["recipe"])
    assert result.exit_code == 0, result.output
    for name, recipe in RECIPES.items():
        assert name in result.output
        assert recipe.env == name


def test_every_recipes_settings_are_valid_for_the_tiny_preset():
    for name, recipe in RECIPES.items():
        cfg = resolve("tiny", [f"train.max_steps={recipe.steps}", *recipe.overrides])
        assert cfg.train.max_steps == recipe.steps, name


def test_a_recipe_runs_every_stage_then_resumes(tmp_path):
    out = tmp_path / "reacher"
    args = ["recipe", "reacher", "--out", str(out), "--episodes", "3", "--eval-episodes", "2",
            "--device", "cpu", "--no-progress", *QUICK]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    data = out / "reacher_3ep_64px_seed0.h5"
    with h5py.File(data) as f:
        assert (f.attrs["render"], f.attrs["policy"]) == ("fast", "random")
    summary = json.loads((out / "recipe_summary.json").read_text())
    assert summary["recipe"]["name"] == "reacher" and summary["recipe"]["episodes"] == 3
    assert summary["recipe"]["extra_overrides"] == QUICK
    assert [s["stage"] for s in summary["stages"]][:2] == ["collect", "train"]
    assert set(summary["success_rates"]) == {"cem_seed42", "cem_seed43", "random_seed42",
                                             "random_seed43"}
    assert summary["train"]["steps"] == 2
    saved = json.loads((out / "run" / "config.json").read_text())
    assert saved["data"]["render"] == "fast" and saved["env"] == "reacher"
    # The recipe's own settings reach the run: three frames in training and in planning.
    assert saved["model"]["history"] == 3 and saved["plan"]["history"] == 3
    modified = data.stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert data.stat().st_mtime_ns == modified  # not collected again
    assert json.loads((out / "recipe_summary.json").read_text())["train"]["steps_this_call"] == 0


def test_an_unknown_recipe_or_no_folder_is_refused(tmp_path):
    result = runner.invoke(app, ["recipe", "maze", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "unknown recipe 'maze'" in result.output
    assert not (tmp_path / "m").exists()
    result = runner.invoke(app, ["recipe", "cube"])
    assert result.exit_code == 2 and "--out" in result.output
    result = runner.invoke(app, ["recipe", "cube", "--out", str(tmp_path / "c"), "--policy", "ou"])
    assert result.exit_code == 2 and "has no policy 'ou'" in result.output
    assert not (tmp_path / "c").exists()


def test_a_policy_variant_gets_its_own_file_and_refuses_another_policys(tmp_path):
    """The variant's data never reuses (or is mistaken for) the recipe's own, and a file
    whose recorded policy is not the one asked for is refused before training."""
    out = tmp_path / "reacher"
    args = ["recipe", "reacher", "--out", str(out), "--episodes", "2", "--eval-episodes", "1",
            "--device", "cpu", "--no-progress", "--policy", "ou", *QUICK]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = out / "reacher_ou_2ep_64px_seed0.h5"
    with h5py.File(data) as f:
        assert f.attrs["policy"] == "ou"
    summary = json.loads((out / "recipe_summary.json").read_text())
    assert summary["recipe"]["policy"] == "ou"
    data.rename(out / "reacher_2ep_64px_seed0.h5")
    result = runner.invoke(app, args[:-len(QUICK) - 2] + QUICK)
    assert result.exit_code == 2
    assert "collected with policy 'ou', but the recipe runs 'random'" in result.output
