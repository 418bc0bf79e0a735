"""Run folders under hostile input and faults: nothing from them is unpickled beyond tensors,
one writer at a time, names that stay inside the run, results that are swapped in whole, and
one-line errors for a full or read-only disk."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import SMALL_MODEL
from typer.testing import CliRunner

import lewm.plan.evaluate as evaluate
from lewm.cli import app
from lewm.config import resolve
from lewm.io import exclusive, lock_path
from lewm.train.checkpoint_io import (
    AtomicCheckpointIO,
    TrainingCheckpointError,
    read_training_checkpoint,
)
from lewm.train.fit import train

runner = CliRunner()
EVAL = ["--episodes", "2", "--device", "cpu", "--no-progress", "--solver", "random"]


class Payload:
    """Unpickling this runs code: it creates the file ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.target,))


def one_line_failure(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return " ".join(result.output.split())


def train_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(run), "--device", "cpu",
            "--no-progress", *SMALL_MODEL, *extra]


@pytest.fixture
def run(tmp_path: Path, small_run: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(small_run, copy)
    return copy


def hashes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# 1. Nothing from a run folder is unpickled beyond tensors and plain containers.


def test_resume_refuses_a_crafted_checkpoint_without_running_it(run, tworoom_file, tmp_path):
    sentinel = tmp_path / "pwned"
    torch.save({"global_step": 1, "state_dict": Payload(sentinel)}, run / "checkpoints/last.ckpt")
    out = one_line_failure(train_args(tworoom_file, run, "--max-steps", "4"))
    assert not sentinel.exists(), "the checkpoint's pickle was executed"
    assert "last.ckpt" in out and "refused" in out


def test_lightning_resume_reads_through_the_safe_reader(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 1, "loops": Payload(sentinel)}, path)
    with pytest.raises(TrainingCheckpointError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not sentinel.exists()


def test_a_real_training_checkpoint_is_plain_data(small_run):
    checkpoint = read_training_checkpoint(small_run / "checkpoints/last.ckpt")
    assert checkpoint["global_step"] == 2


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_corrupt_checkpoint_on_resume_says_which_file_and_how_to_start_over(
    run, tworoom_file, damage
):
    last = run / "checkpoints/last.ckpt"
    data = last.read_bytes()
    last.write_bytes(os.urandom(4096) if damage == "random" else data[: len(data) // 2])
    before = hashes(run)
    out = one_line_failure(train_args(tworoom_file, run, "--max-steps", "4"))
    assert str(last) in out and "delete it" in out
    assert hashes(run) == before


# 3. Result names stay inside RUN/eval/.


@pytest.mark.parametrize("name", ["../config", "/tmp/elsewhere", "a/b", "", ".hidden", "x" * 101])
def test_eval_name_must_be_a_plain_name(run, tworoom_file, name):
    before = hashes(run)
    out = one_line_failure(["eval", str(run), "--data", str(tworoom_file), *EVAL, "--name", name])
    assert "--name" in out
    assert hashes(run) == before


# 4. One writer at a time.


def test_a_second_trainer_is_refused_naming_the_holder(run, tworoom_file):
    before = hashes(run)
    with exclusive(run / ".lock", "held by this test"):
        out = one_line_failure(train_args(tworoom_file, run, "--max-steps", "4"))
    assert f"in use by process {os.getpid()}" in out
    assert hashes(run) == before
    assert not (run / ".lock").exists()


def test_a_second_evaluation_of_the_same_name_is_refused(run, tworoom_file):
    target = run / "eval" / "same"
    with exclusive(lock_path(target), "held by this test"):
        out = one_line_failure(["eval", str(run), "--data", str(tworoom_file), *EVAL,
                                "--name", "same"])
    assert f"in use by process {os.getpid()}" in out
    assert not target.exists()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text("12345 lewm train (killed)\n")  # no process holds it any more
    with exclusive(lock, "run"):
        assert lock.read_text().startswith(f"{os.getpid()} ")
    assert not lock.exists()


# 10. Results are swapped in whole; a failed first train does not poison its folder.


def test_rerun_eval_replaces_the_whole_result_folder(run, tworoom_file):
    args = ["eval", str(run), "--data", str(tworoom_file), "--device", "cpu", "--no-progress",
            "--solver", "random", "--name", "r"]
    assert runner.invoke(app, [*args, "--episodes", "4"]).exit_code == 0
    assert len(list((run / "eval/r").glob("*.gif"))) == 4
    assert runner.invoke(app, [*args, "--episodes", "2"]).exit_code == 0
    result = json.loads((run / "eval/r/result.json").read_text())
    gifs = sorted(p.name for p in (run / "eval/r").glob("*.gif"))
    expected = sorted(f"episode_{e['index']:03d}_{'ok' if e['success'] else 'fail'}.gif"
                      for e in result["episodes"])
    assert gifs == expected and len(gifs) == 2


def test_interrupted_eval_leaves_the_previous_result(run, tworoom_file, monkeypatch):
    args = ["eval", str(run), "--data", str(tworoom_file), *EVAL, "--name", "r"]
    assert runner.invoke(app, args).exit_code == 0
    before = hashes(run / "eval")
    protocol = evaluate.run_protocol

    def interrupted(*a, **kw):
        protocol(*a, **kw)  # writes its GIFs into the staging folder...
        raise KeyboardInterrupt  # ...and is stopped before its JSON

    monkeypatch.setattr(evaluate, "run_protocol", interrupted)
    result = runner.invoke(app, [*args, "--episodes", "3"])
    assert result.exit_code == 130
    assert hashes(run / "eval") == before
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["r"]


def test_a_failed_first_train_does_not_poison_its_folder(tmp_path, tworoom_file):
    run = tmp_path / "run"
    bad = resolve("tiny", [*SMALL_MODEL, "train.batch_size=5000"], {"train.max_steps": 1})
    with pytest.raises(ValueError, match="batch"):
        train(tworoom_file, run, bad, device="cpu", progress=False)
    fixed = resolve("tiny", [*SMALL_MODEL, "model.pred_depth=2"], {"train.max_steps": 1})
    assert train(tworoom_file, run, fixed, device="cpu", progress=False)["steps"] == 1


# 11. Settings the data contradicts, and resumes that change the data or the step budget.


def test_explicit_env_that_contradicts_the_file_is_refused(tmp_path, tworoom_file):
    out = one_line_failure(train_args(tworoom_file, tmp_path / "run", "--max-steps", "1",
                                      "env=pusht"))
    assert "env=pusht" in out and "tworoom" in out
    assert not (tmp_path / "run").exists()


def test_resume_on_other_data_or_fewer_steps_says_so(run, tworoom_file, tmp_path):
    other = tmp_path / "copy.h5"
    shutil.copy(tworoom_file, other)
    result = runner.invoke(app, train_args(other, run, "--max-steps", "2"))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning:" in text and "copy.h5" in text and str(tworoom_file) in text
    assert "already at step 2" in text


# 5, 8. A full or read-only disk: one line naming the path, and what was there is kept.


@contextlib.contextmanager
def small_filesystem(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (root only: skipped where mounting is not allowed)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_training_onto_a_full_disk_is_one_line(tmp_path, tworoom_file):
    with small_filesystem(tmp_path, "64k") as mount:
        out = one_line_failure(train_args(tworoom_file, mount / "run", "--max-steps", "2"))
        assert "no space left on device" in out
        assert str(mount) in out


def test_eval_on_a_read_only_run_folder_is_one_line(tmp_path, small_run, tworoom_file):
    with small_filesystem(tmp_path, "16m") as mount:
        shutil.copytree(small_run, mount / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        before = hashes(mount / "run")
        out = one_line_failure(["eval", str(mount / "run"), "--data", str(tworoom_file),
                                *EVAL])
        assert "read-only file system" in out and str(mount / "run") in out
        assert hashes(mount / "run") == before
