"""The analysis commands and the report, end to end on a small fixture run."""

from __future__ import annotations

import json

import pytest
from conftest import SMALL_MODEL
from typer.testing import CliRunner

from lewm.cli import app
from lewm.config import resolve
from lewm.report.summary import build_report
from lewm.train.fit import train

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tworoom_file):
    """4 training steps with 3 held-out episodes (probing needs 2 to split by episode)."""
    run = tmp_path_factory.mktemp("run")
    cfg = resolve("tiny", [*SMALL_MODEL, "data.val_fraction=0.25"], {"train.max_steps": 4})
    train(tworoom_file, run, cfg, device="cpu", progress=False)
    return run


def _invoke(*args: str) -> str:
    result = runner.invoke(app, [*args])
    assert result.exit_code == 0, result.output
    return result.output


def test_training_logs_straightness(run):
    header = (run / "logs/version_0/metrics.csv").read_text().splitlines()[0]
    assert "val/straightness" in header


def test_report_on_a_run_missing_analyses_says_what_to_run(tmp_path):
    paths = build_report(tmp_path)
    text = paths["markdown"].read_text()
    assert "`lewm probe RUN`" in text and "`lewm train`" in text
    assert paths["html"].read_text().startswith("<!doctype html>")


def test_analysis_commands_and_report_write_their_files(run):
    out = _invoke("probe", str(run), "--device", "cpu")
    assert "agent_pos" in out and "random_init" in out
    _invoke("surprise", str(run), "--perturb", "teleport", "--trajectories", "2", "--steps", "4",
            "--device", "cpu")
    _invoke("straightness", str(run), "--device", "cpu")
    _invoke("rollout-error", str(run), "--horizon", "3", "--device", "cpu")
    _invoke("report", str(run))
    analysis = run / "analysis"
    probe = json.loads((analysis / "probe.json").read_text())
    assert set(probe["targets"]["agent_pos"]) == {"column", "trained", "random_init"}
    surprise = json.loads((analysis / "surprise_teleport.json").read_text())
    assert surprise["at"] == 2 and len(surprise["curves"]["perturbed"]) == 2
    # Shared seeds: both rollouts agree before the perturbation.
    assert surprise["curves"]["clean"][0][0] == surprise["curves"]["perturbed"][0][0]
    assert (analysis / "surprise_teleport.png").stat().st_size > 0
    assert -1.0 <= json.loads((analysis / "straightness.json").read_text())["trained"] <= 1.0
    assert json.loads((analysis / "rollout_error.json").read_text())["horizons"] == [1, 2, 3]
    text = (run / "report.md").read_text()
    for section in ("Probing", "agent_pos", "teleport", "Temporal straightening", "copy-last"):
        assert section in text
    analyses = text.split("## Probing")[1].split("## Pixel decoder")[0]
    assert "No " not in analyses  # every analysis section is filled
    for png in ("training.png", "surprise_teleport.png", "rollout_error.png"):
        assert (run / "report_files" / png).stat().st_size > 0


def test_bad_input_gives_one_clear_line(run, tmp_path):
    result = runner.invoke(app, ["probe", str(run), "--targets", "nope", "--device", "cpu"])
    assert result.exit_code == 2 and "unknown probe target 'nope'" in result.output
    assert "agent_pos" in result.output
    result = runner.invoke(app, ["surprise", str(run), "--perturb", "melt", "--device", "cpu"])
    assert result.exit_code == 2 and "unknown perturbation 'melt'" in result.output
    result = runner.invoke(app, ["straightness", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such run folder" in result.output
    result = runner.invoke(app, ["surprise", str(run), "--env", "pusht", "--device", "cpu"])
    assert result.exit_code == 2 and "trained on 'tworoom'" in result.output
