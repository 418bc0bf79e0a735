"""Experiment trackers (train.logger): W&B offline and a local MLflow store, one tracker run
for training, its resumption, evaluation and the report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import SMALL_MODEL

from lewm.config import ConfigError, EvalConfig, resolve
from lewm.plan.evaluate import evaluate_run
from lewm.report.summary import build_report
from lewm.track import TRACKERS_FILE, log_to_run, parse_loggers
from lewm.train.fit import train


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B offline with every folder it writes under tmp; MLflow on its default store."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _wandb_records(run: Path, run_id: str) -> list[bytes]:
    """The raw bytes of each offline W&B run file for ``run_id`` (one per process that
    logged): metric names are stored verbatim in them."""
    return [p.read_bytes() for p in sorted(run.glob(f"wandb/offline-run-*-{run_id}*/*.wandb"))]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("csv", ("csv",)), (" csv , wandb ", ("csv", "wandb")),
     ("csv,tensorboard,wandb,mlflow", ("csv", "tensorboard", "wandb", "mlflow"))],
)  # fmt: skip
def test_logger_lists_parse(value, expected):
    assert parse_loggers(value) == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [("csv,neptune", "distinct loggers"), ("csv,csv", "distinct loggers"),
     ("tensorboard,wandb", "includes csv"), ("", "includes csv")],
)  # fmt: skip
def test_bad_logger_lists_are_refused_naming_the_field(value, says):
    with pytest.raises(ConfigError, match=rf"train\.logger=.*{says}"):
        resolve("tiny", [f"train.logger={value}"])


def test_a_missing_tracker_package_is_refused_before_the_run_folder_exists(
    tmp_path, tworoom_file, monkeypatch
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now fails
    run = tmp_path / "run"
    cfg = resolve("tiny", [*SMALL_MODEL, "train.logger=csv,wandb"], {"train.max_steps": 2})
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lewm\[wandb\]'"):
        train(tworoom_file, run, cfg, device="cpu", progress=False)
    assert not run.exists()


@pytest.mark.slow
def test_training_resume_eval_and_report_log_to_one_tracker_run(
    tmp_path, tworoom_file, offline
):
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    overrides = [*SMALL_MODEL, "train.logger=csv,wandb,mlflow", "train.tracker_project=t"]
    train(tworoom_file, run, resolve("tiny", overrides, {"train.max_steps": 2}),
          device="cpu", progress=False)  # fmt: skip
    ids = json.loads((run / TRACKERS_FILE).read_text())
    assert ids["wandb"]["project"] == "t" and ids["mlflow"]["experiment"] == "t"
    assert ids["mlflow"]["tracking_uri"] == (run / "mlruns").resolve().as_uri()
    assert not (run / "tb").exists()  # tensorboard was left out of the list
    (first,) = _wandb_records(run, ids["wandb"]["id"])
    assert b"train/loss" in first

    # Resuming continues the same tracker runs rather than starting new ones.
    train(tworoom_file, run, resolve("tiny", overrides, {"train.max_steps": 4}),
          device="cpu", progress=False)  # fmt: skip
    assert json.loads((run / TRACKERS_FILE).read_text()) == ids
    client = MlflowClient(ids["mlflow"]["tracking_uri"])
    history = client.get_metric_history(ids["mlflow"]["run_id"], "train/loss")
    assert {m.step for m in history} >= {1, 3}

    result, _ = evaluate_run(run, tworoom_file, EvalConfig(episodes=2, budget=3, batch=2,
                             split="all"), solver="random", device="cpu", progress=False)
    metrics = client.get_run(ids["mlflow"]["run_id"]).data.metrics
    assert metrics["eval/random_seed42/success_rate"] == result.success_rate
    assert metrics["eval/random_seed42/wilson95_high"] > metrics["eval/random_seed42/wilson95_low"]
    artifacts = client.list_artifacts(ids["mlflow"]["run_id"], "eval/random_seed42")
    assert [Path(a.path).name for a in artifacts] == ["result.json"]

    build_report(run)
    names = {Path(a.path).name for a in client.list_artifacts(ids["mlflow"]["run_id"], "report")}
    assert {"report.html", "training.png"} <= names
    records = b"".join(_wandb_records(run, ids["wandb"]["id"]))
    assert b"eval/random_seed42/success_rate" in records
    assert b"report/training" in records


def test_an_unreachable_tracker_is_a_warning_and_results_stay(tmp_path, offline):
    run = tmp_path / "run"
    run.mkdir()
    store = (tmp_path / "store").resolve().as_uri()
    (run / TRACKERS_FILE).write_text(json.dumps(
        {"mlflow": {"experiment": "x", "run_id": "no-such-run", "tracking_uri": store}}
    ))  # fmt: skip
    with pytest.warns(UserWarning, match="results are saved, but logging them to mlflow failed"):
        assert log_to_run(run, {"eval/x": 1.0}) == []


def test_a_run_without_trackers_logs_nowhere(small_run):
    assert log_to_run(small_run, {"eval/x": 1.0}) == []


def test_an_unreadable_trackers_file_is_named(tmp_path):
    (tmp_path / TRACKERS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=rf"{TRACKERS_FILE}: unreadable tracker ids"):
        log_to_run(tmp_path, {})
