"""A training process killed at any moment resumes: checkpoints are replaced atomically, and
re-running the same command continues the step count from the last one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL_MODEL

import lewm.train.checkpoint_io as checkpoint_io
from lewm.io import remove_stale_parts
from lewm.train.checkpoint_io import AtomicCheckpointIO

LEWM = str(Path(sys.executable).with_name("lewm"))


def test_failed_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)

    def torch_save_then_die(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", torch_save_then_die)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"global_step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_partial_files_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / ".last.ckpt.abc123.part").write_bytes(b"cut short")
    (tmp_path / "last.ckpt").write_bytes(b"kept")
    remove_stale_parts(tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_and_continues_the_step_count(tmp_path, tworoom_file):
    steps = 30
    command = [
        LEWM, "train", "--data", str(tworoom_file), "--out", str(tmp_path), "--preset", "tiny",
        "--device", "cpu", "--no-progress", "--max-steps", str(steps), *SMALL_MODEL,
        "train.val_every=1000",
    ]
    last = tmp_path / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "training finished before it could be killed"

    killed_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < killed_at < steps
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == steps
    assert summary["steps_this_call"] == steps - killed_at
