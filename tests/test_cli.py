"""The command line: help texts, and bad input that must end in one clear line, exit 2."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from lewm.cli import app

runner = CliRunner()


def invoke_fails(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize("command", ["collect", "train", "eval", "config", "params", "demo"])
def test_every_command_explains_itself(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--seed" in result.output or command in ("config", "params")


def test_params_of_paper_preset_match_the_paper_table():
    result = runner.invoke(app, ["params", "--preset", "paper"])
    assert result.exit_code == 0
    for count in ("5,501,376", "792,768", "156,206", "10,791,360", "18,034,478"):
        assert count in result.output


def test_missing_data_file(tmp_path):
    out = invoke_fails(["train", "--data", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "r")])
    assert "nope.h5" in out


def test_not_an_hdf5_file(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("hello")
    assert "notes.h5" in invoke_fails(["train", "--data", str(bad), "--out", str(tmp_path / "r")])


def test_truncated_hdf5_file(tmp_path, tworoom_file):
    cut = tmp_path / "cut.h5"
    cut.write_bytes(tworoom_file.read_bytes()[:5000])
    assert "cut.h5" in invoke_fails(["train", "--data", str(cut), "--out", str(tmp_path / "r")])


def test_file_missing_a_column(tmp_path, tworoom_file):
    path = tmp_path / "noaction.h5"
    shutil.copy(tworoom_file, path)
    with h5py.File(path, "a") as f:
        del f["action"]
    out = invoke_fails(["train", "--data", str(path), "--out", str(tmp_path / "r")])
    assert "noaction.h5" in out and "action" in out


def test_float_pixels_with_nan_are_refused(tmp_path, tworoom_file):
    path = tmp_path / "nanpix.h5"
    shutil.copy(tworoom_file, path)
    with h5py.File(path, "a") as f:
        pixels = f["pixels"][:].astype(np.float32)
        pixels[0, 0, 0, 0] = np.nan
        del f["pixels"]
        f["pixels"] = pixels
    out = invoke_fails(["train", "--data", str(path), "--out", str(tmp_path / "r")])
    assert "nanpix.h5" in out and "pixels" in out


def test_unknown_environment(tmp_path):
    out = invoke_fails(["collect", "moonbase", "--episodes", "1", "--out", str(tmp_path / "x.h5")])
    assert "moonbase" in out and "tworoom" in out
    assert not (tmp_path / "x.h5").exists()


def test_unknown_preset(tmp_path, tworoom_file):
    out = invoke_fails(["train", "--data", str(tworoom_file), "--out", str(tmp_path / "r"),
                        "--preset", "huge"])
    assert "huge" in out and "tiny" in out


def test_bad_override(tmp_path, tworoom_file):
    out = invoke_fails(["train", "--data", str(tworoom_file), "--out", str(tmp_path / "r"),
                        "train.lr=fast"])
    assert "train.lr" in out


def test_training_data_of_the_wrong_resolution(tmp_path, tworoom_file):
    out = invoke_fails(["train", "--data", str(tworoom_file), "--out", str(tmp_path / "r"),
                        "--preset", "paper"])
    assert "64x64" in out and "224x224" in out


def test_eval_without_a_checkpoint(tmp_path):
    out = invoke_fails(["eval", str(tmp_path / "norun"), "--no-progress"])
    assert "norun" in out


@pytest.mark.parametrize("compile_seconds", [None, 12.5])
def test_eval_table_reports_compile_time_apart(capsys, tmp_path, compile_seconds):
    from lewm.cli import print_eval

    result = {"settings": {"env": "tworoom", "solver": "cem"}, "episodes": [{}] * 4,
              "success_rate": 0.75, "plan_seconds_mean": 0.5, "plan_seconds_median": 0.4,
              "plan_seconds_per_env": 0.25, "envs_per_call_mean": 2.0,
              "compile_seconds": compile_seconds}  # fmt: skip
    print_eval(result, tmp_path / "cem_seed42.json")
    out = " ".join(capsys.readouterr().out.split())
    assert "75.0%" in out and "0.500 / 0.400" in out
    assert ("12.5 s compiling" in out) == (compile_seconds is not None)
