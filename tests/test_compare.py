"""`lewm compare` over hand-made run folders, its metrics, and `lewm sweep` end to end."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
from conftest import SMALL_MODEL
from typer.testing import CliRunner

from lewm.baselines.dinowm_config import RANDOM_ENCODER_LABEL as RANDOM_ENCODER
from lewm.cli import app
from lewm.config import preset
from lewm.report.compare import compare, compare_runs, loss_roughness
from lewm.sweep import folder_name, parse_seeds, split_grid, sweep

runner = CliRunner()


def _decay(n: int = 40) -> list[float]:
    return [2.0 * math.exp(-i / 10) + 0.1 for i in range(n)]


def make_run(
    folder: Path,
    model: dict | None = None,
    losses: list[float] | None = None,
    evals: dict[str, tuple[int, int]] | None = None,
    summary: dict | None = None,
) -> Path:
    """A run folder as training and evaluation leave it, written by hand: a real tiny config
    (``model`` entries edited into its JSON), a summary, a metrics CSV and eval results."""
    folder.mkdir(parents=True)
    preset("tiny").save(folder / "config.json")
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(model or {})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "train_summary.json").write_text(json.dumps({
        "steps": 40, "steps_this_call": 40, "frames_per_second": 123.4,
        "heldout_after_bn_recalibration": {"pred_mse": 0.125, "copy_last_mse": 0.5},
        **(summary or {}),
    }))
    losses = _decay() if losses is None else losses
    logs = folder / "logs" / "version_0"
    logs.mkdir(parents=True)
    columns = ["epoch", "step", "train/loss", "train/pred_loss", "train/emb_rank",
               "train/emb_std", "val/pred_loss"]
    with (logs / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i, loss in enumerate(losses):
            writer.writerow([0, i, loss, loss / 2, 10 + i, 0.5, loss if i % 10 == 9 else ""])
    evals = {"cem_seed42": (45, 50)} if evals is None else evals
    for name, (successes, n) in evals.items():
        (folder / "eval" / name).mkdir(parents=True)
        (folder / "eval" / name / "result.json").write_text(json.dumps({
            "success_rate": successes / n,
            "episodes": [{"index": i, "success": i < successes} for i in range(n)],
            "plan_seconds_per_env": 0.25,
        }))
    return folder


def test_roughness_is_one_for_a_monotone_curve_and_higher_for_noise():
    smooth = _decay(60)
    rng = random.Random(0)
    noisy = [y + rng.gauss(0, 0.1) for y in smooth]
    assert loss_roughness(smooth) == pytest.approx(1.0)
    assert loss_roughness(noisy) > 1.2
    # Scale-free: the same curve in other units scores the same.
    assert loss_roughness([100 * y for y in noisy]) == pytest.approx(loss_roughness(noisy))
    assert loss_roughness(smooth[:4]) is None  # too short to smooth


def test_compare_writes_table_json_and_curves(tmp_path):
    a = make_run(tmp_path / "a" / "run",
                 summary={"model": {"parameters": {"total": 1_500_000, "trainable": 1_000_000}}})
    rng = random.Random(1)
    b = make_run(tmp_path / "b" / "run", losses=[y + rng.gauss(0, 0.2) for y in _decay()],
                 evals={"cem_seed42": (0, 10), "cem_seed43": (10, 10)},
                 summary={"steps_this_call": 0, "frames_per_second": 0.0})
    out = tmp_path / "cmp"
    rows, paths = compare_runs([a, b], out)
    assert [r["name"] for r in rows] == ["a/run", "b/run"]  # same folder name: parent added
    first, second = rows
    assert first["kind"] == first["kind_label"] == "lewm"
    assert first["frames_per_second"] == 123.4
    assert second["frames_per_second"] is None  # a re-export-only call measured nothing
    assert first["emb_rank"] == 49 and first["final_pred_loss"] == pytest.approx(_decay()[-1] / 2)
    assert first["heldout"] == {"pred_mse": 0.125, "copy_last_mse": 0.5}
    assert first["loss_roughness"] == pytest.approx(1.0)
    assert second["loss_roughness"] > first["loss_roughness"]
    assert [e["name"] for e in second["evaluations"]] == ["cem_seed42", "cem_seed43"]
    assert first["evaluations"][0]["wilson95"] == pytest.approx([0.786398, 0.956524], abs=1e-5)
    assert first["evaluations"][0]["plan_flops_per_plan"] is None

    saved = json.loads(paths["json"].read_text())
    assert saved["runs"][1]["evaluations"][1]["successes"] == 10
    text = paths["markdown"].read_text()
    assert "| a/run | lewm | 1.50M (1.00M) | 123 |" in text
    assert "90.0% [78.6, 95.7] (45/50)" in text
    assert "0.0% [0.0, 27.8] (0/10)<br>100.0% [72.2, 100.0] (10/10)" in text
    assert "total variation of the smoothed curve" in text
    assert paths["curves"].read_bytes().startswith(b"\x89PNG")


def test_compare_reads_resumed_logs_and_old_eval_files(tmp_path):
    run = make_run(tmp_path / "run", evals={})
    later = run / "logs" / "version_1"
    later.mkdir()
    (later / "metrics.csv").write_text("epoch,step,train/loss,train/std\n0,39,7.0,0.25\n")
    (run / "eval").mkdir()
    (run / "eval" / "cem_seed7.json").write_text(json.dumps(
        {"success_rate": 0.5, "episodes": 4, "plan_seconds_mean": 2.0,
         "plan_flops_per_plan": 3.0e9}))
    (row,) = compare([run])
    assert row["last_logged"]["train/loss"] == 7.0  # the later version wins its step
    assert row["last_logged"]["train/std"] == 0.25  # any train/* term is kept
    (result,) = row["evaluations"]
    assert (result["successes"], result["episodes"]) == (2, 4)
    assert result["plan_seconds_per_env"] == 2.0 and result["plan_flops_per_plan"] == 3.0e9


def test_random_encoder_label_in_markdown_json_and_printed_table(tmp_path):
    random_enc = make_run(tmp_path / "dino_random", model={"kind": "dinowm",
                                                           "encoder_weights": ""})
    real = make_run(tmp_path / "dino_real", model={"kind": "dinowm",
                                                   "encoder_weights": "dinov2.safetensors"})
    noprop = make_run(tmp_path / "dino_noprop", model={"kind": "dinowm", "encoder_weights": ""},
                      summary={"model": {"note": f"{RANDOM_ENCODER}; noprop"}})
    claims = make_run(tmp_path / "dino_claims", model={"kind": "dinowm", "encoder_weights": ""},
                      summary={"model": {"note": "DINOv2 weights from x.pth"}})
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(random_enc), str(real), str(noprop), str(claims),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"dino_random: dinowm ({RANDOM_ENCODER})" in result.output
    assert "dino_real:" not in result.output
    rows = json.loads((out / "compare.json").read_text())["runs"]
    assert [r["kind_label"] for r in rows] == [
        f"dinowm ({RANDOM_ENCODER})", "dinowm", f"dinowm ({RANDOM_ENCODER}; noprop)",
        f"dinowm ({RANDOM_ENCODER})",
    ]
    assert f"| dino_random | dinowm ({RANDOM_ENCODER}) |" in (out / "compare.md").read_text()


@pytest.mark.parametrize("bad", ["not_a_run", "a_file", "missing"])
def test_compare_refuses_a_non_run_naming_it_and_writes_nothing(tmp_path, bad):
    good = make_run(tmp_path / "good")
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "cmp"
    with pytest.raises(ValueError, match=bad):
        compare_runs([good, tmp_path / bad], out)
    result = runner.invoke(app, ["compare", str(good), str(tmp_path / bad), "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.startswith("error:") and bad in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_compare_refuses_the_same_run_twice(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(ValueError, match="given twice"):
        compare([run, tmp_path / "." / "run"])


def test_sweep_grid_needs_exactly_one_comma_list(tmp_path):
    assert split_grid(["train.lr=1e-3,1e-2", "seed=3"]) == ("train.lr", ["1e-3", "1e-2"],
                                                            ["seed=3"])
    with pytest.raises(ValueError, match="no swept key"):
        split_grid(["train.lr=1e-3"])
    with pytest.raises(ValueError, match=r"several swept keys \(train.lr, sigreg_lambda\)"):
        split_grid(["train.lr=1e-3,1e-2", "sigreg_lambda=0.1,1"])
    with pytest.raises(ValueError, match="listed twice"):
        split_grid(["train.lr=1e-3,1e-3"])
    out = tmp_path / "sweep"
    for grid in (["train.lr=1e-3"], ["train.lr=1e-3,1e-2", "sigreg_lambda=0.1,1"]):
        result = runner.invoke(app, ["sweep", "--data", str(tmp_path / "d.h5"), "--out",
                                     str(out), *grid])
        assert result.exit_code == 2 and "swept key" in result.output
    assert not out.exists()


def test_sweep_checks_every_value_before_training(tmp_path, tworoom_file):
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match="train.lr='oops'"):
        sweep(tworoom_file, out, [*SMALL_MODEL, "train.max_steps=2", "train.lr=1e-3,oops"],
              device="cpu", say=lambda _: None)
    assert not out.exists()


def test_sweep_names_and_seeds():
    assert folder_name("train.lr", "1e-3") == "train.lr=1e-3"
    assert folder_name("encoder_weights", "/w/dino v2.pt") == "encoder_weights=_w_dino_v2.pt"
    assert parse_seeds("42,43") == [42, 43]
    for bad in ("42,x", "42,42", "-1"):
        with pytest.raises(ValueError, match="--eval-seeds"):
            parse_seeds(bad)


@pytest.mark.slow
def test_sweep_trains_evaluates_compares_and_resumes(tmp_path, tworoom_file):
    out = tmp_path / "sweep"
    grid = [*SMALL_MODEL, "train.max_steps=6", "data.val_fraction=0.25", "plan.samples=16",
            "plan.elites=4", "plan.iterations=2", "sigreg_lambda=0.05,0.5"]
    said: list[str] = []
    rows, paths = sweep(tworoom_file, out, grid, eval_seeds=[42], episodes=2, device="cpu",
                        say=said.append)
    runs = [out / "sigreg_lambda=0.05", out / "sigreg_lambda=0.5"]
    assert [r["name"] for r in rows] == [r.name for r in runs]
    for run in runs:
        assert json.loads((run / "train_summary.json").read_text())["steps"] == 6
        assert json.loads((run / "config.json").read_text())["model"]["sigreg_lambda"] in (0.05,
                                                                                        0.5)
        assert (run / "eval" / "cem_seed42" / "result.json").is_file()
    assert all(r["evaluations"][0]["episodes"] == 2 for r in rows)
    assert any("training 6 steps" in m for m in said)
    assert "| sigreg_lambda=0.5 | lewm |" in paths["markdown"].read_text()

    def stamps() -> list[int]:
        return [p.stat().st_mtime_ns for run in runs for p in (
            run / "train_summary.json", run / "model.safetensors",
            run / "eval" / "cem_seed42" / "result.json")]

    before = stamps()
    result = runner.invoke(app, ["sweep", "--data", str(tworoom_file), "--out", str(out),
                                 "--episodes", "2", "--device", "cpu", *grid])
    assert result.exit_code == 0, result.output
    assert stamps() == before  # nothing trained or evaluated again
    assert result.output.count("kept") == 4 and "training" not in result.output
    assert "sigreg_lambda=0.05" in result.output and "2 run(s) compared" in result.output
