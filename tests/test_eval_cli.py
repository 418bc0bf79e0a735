"""`lewm eval` starts from the run's saved eval section, takes every eval field as an
override, and reports several pair seeds together."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from lewm.cli import app
from lewm.config import EvalConfig
from lewm.stats import wilson_interval

runner = CliRunner()
BASE = ["--device", "cpu", "--no-progress", "--solver", "random"]
# A value for every eval field, each unlike its default.
CHANGED = {"episodes": 3, "goal_offset": 20, "budget": 7, "split": "all", "gifs": 1,
           "batch": 2, "exclude_solved_starts": False, "render": "fast"}


@pytest.fixture()
def run(tmp_path, small_run):
    folder = tmp_path / "run"
    shutil.copytree(small_run, folder)
    return folder


def _settings(run, name):
    return json.loads((run / "eval" / name / "result.json").read_text())["settings"]["eval"]


def test_the_table_covers_every_eval_field():
    assert set(CHANGED) == {f.name for f in fields(EvalConfig)}
    assert all(getattr(EvalConfig(), k) != v for k, v in CHANGED.items())


@pytest.mark.parametrize("prefix", ["", "eval."])
def test_every_eval_field_can_be_overridden(run, tworoom_file, prefix):
    overrides = [f"{prefix}{k}={str(v).lower()}" for k, v in CHANGED.items()]
    result = runner.invoke(app, ["eval", str(run), "--data", str(tworoom_file), *BASE,
                                 "--name", "o", *overrides])
    assert result.exit_code == 0, result.output
    assert _settings(run, "o") == CHANGED


def test_eval_starts_from_the_runs_saved_section(run, tworoom_file):
    config = json.loads((run / "config.json").read_text())
    config["eval"].update(budget=9, episodes=2, split="all")
    (run / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["eval", str(run), "--data", str(tworoom_file), *BASE,
                                 "--name", "saved"])
    assert result.exit_code == 0, result.output
    saved = _settings(run, "saved")
    assert (saved["budget"], saved["episodes"], saved["split"]) == (9, 2, "all")
    result = runner.invoke(app, ["eval", str(run), "--data", str(tworoom_file), *BASE,
                                 "--name", "flag", "--episodes", "3"])
    assert result.exit_code == 0, result.output
    assert (_settings(run, "flag")["episodes"], _settings(run, "flag")["budget"]) == (3, 9)


def test_several_pair_seeds_are_reported_together(run, tworoom_file):
    result = runner.invoke(app, ["eval", str(run), "--data", str(tworoom_file), *BASE,
                                 "--episodes", "4", "--split", "all", "--seed", "5",
                                 "--seeds", "3"])
    assert result.exit_code == 0, result.output
    results = [json.loads((run / "eval" / f"random_seed{s}" / "result.json").read_text())
               for s in (5, 6, 7)]
    summary = json.loads((run / "eval" / "random_seeds5-7" / "summary.json").read_text())
    counts = [sum(e["success"] for e in r["episodes"]) for r in results]
    assert [row["successes"] for row in summary["per_seed"]] == counts
    assert summary["pooled"] == {
        "successes": sum(counts), "episodes": 12, "rate": sum(counts) / 12,
        "wilson95": pytest.approx(list(wilson_interval(sum(counts), 12))),
    }
    assert summary["mean_rate"] == pytest.approx(sum(counts) / 12)
    assert "3 pair seeds" in result.output and "pooled" in result.output
    assert not (run / "eval" / "random_seeds5-7" / "result.json").exists()


def test_an_unknown_eval_field_is_refused(run, tworoom_file):
    result = runner.invoke(app, ["eval", str(run), "--data", str(tworoom_file), *BASE,
                                 "eval.nope=1"])
    assert result.exit_code == 2 and "nope" in result.output
    assert not (run / "eval").exists()
