"""Faults in real processes: SIGKILL or Ctrl-C (SIGINT) at any moment of ``lewm collect``,
``lewm train`` or ``lewm eval`` leaves either the previous complete output or the new
complete output, never a mix; a second writer of the same output is refused, naming the
first one's pid, and the first one still finishes.

Each test runs the CLI as ``python -m lewm.cli`` in a child process, waits until the child
is demonstrably writing (a temporary file, a lock or a new checkpoint appears) and then
signals it; polling keeps the waits short.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import SMALL_MODEL, ctrl_c_as_at_a_terminal

from lewm.checkpoint import load_checkpoint
from lewm.config import resolve
from lewm.data import EpisodeStore, collect
from lewm.train.fit import train

pytestmark = pytest.mark.slow
LEWM = [sys.executable, "-m", "lewm.cli"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
BAD_OUTPUT = ("Traceback", "Exception ignored")
# Enough work that the child is still busy when signalled (it is killed long before).
COLLECT_EPISODES = 3000
TRAIN_STEPS = 60
# The first of two writers must outlive the second one's start-up (imports, data, model).
FIRST_TRAIN_STEPS = 200


class Child:
    """A ``lewm`` command in a child process, its output collected in a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen([*LEWM, *args], stdout=self._out,
                                     stderr=subprocess.STDOUT, env=ENV,
                                     preexec_fn=ctrl_c_as_at_a_terminal)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = 120) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._out.close()
        return code, self.log.read_text()


def wait_until(condition: Callable[[], bool], child: Child, timeout: float = 60) -> None:
    """Poll ``condition`` while ``child`` runs; fail if it never holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if not child.running():
            code, output = child.wait()
            pytest.fail(f"the child ended (exit {code}) before the fault could be injected:"
                        f" {output[-800:]}")
        time.sleep(0.02)
    child.proc.kill()
    child.wait()
    pytest.fail("the child never reached the point to interrupt")


def interrupt(child: Child, sig: signal.Signals) -> tuple[int, str]:
    """Send ``sig``; for SIGINT the child must exit 130 with one clean line, no traceback."""
    child.proc.send_signal(sig)
    code, output = child.wait()
    if sig == signal.SIGINT:
        assert code == 130, f"SIGINT gave exit {code}: {output[-800:]}"
        for bad in BAD_OUTPUT:
            assert bad not in output, output[-2000:]
    else:
        assert code == -signal.SIGKILL, f"exit {code}: {output[-800:]}"
    return code, output


def parts(folder: Path) -> list[Path]:
    """Temporary files and folders of (killed) writers: hidden ``.NAME.*.part``."""
    return sorted(p for p in folder.rglob(".*.part"))


SIGNALS = [pytest.param(signal.SIGKILL, id="SIGKILL"), pytest.param(signal.SIGINT, id="SIGINT")]


# collect


@pytest.mark.parametrize("sig", SIGNALS)
def test_interrupted_collect_leaves_the_old_or_the_new_file(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Re-collecting over an existing file and dying mid-way keeps the old file whole."""
    out = tmp_path / "data.h5"
    collect("tworoom", 3, out, resolution=32, seed=0, progress=False)
    old = out.read_bytes()
    args = ["collect", "tworoom", "--episodes", str(COLLECT_EPISODES), "--seed", "1",
            "--resolution", "32", "--out", str(out), "--overwrite"]
    child = Child(args, tmp_path / "collect.log")
    wait_until(lambda: bool(list(tmp_path.glob(".data.h5.*.part"))), child)
    time.sleep(0.5)
    interrupt(child, sig)

    if out.read_bytes() != old:
        with EpisodeStore(out, cache="none") as store:
            assert store.num_episodes == COLLECT_EPISODES, "a mix of old and new"
    if sig == signal.SIGINT:
        assert parts(tmp_path) == [], "an interrupted collect left its temporary file"
    # A later collect clears what a killed one left behind.
    again = subprocess.run([*LEWM, "collect", "tworoom", "--episodes", "2", "--resolution",
                            "32", "--out", str(out), "--overwrite"], capture_output=True,
                           text=True, env=ENV, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert parts(tmp_path) == []
    with EpisodeStore(out, cache="none") as store:
        assert store.num_episodes == 2


# train


def _train_args(data: Path, run: Path, steps: int) -> list[str]:
    return ["train", "--data", str(data), "--out", str(run), "--device", "cpu",
            "--no-progress", "--max-steps", str(steps), *SMALL_MODEL, "train.val_every=1000"]


@pytest.fixture
def trained(tmp_path: Path, tworoom_file: Path) -> Path:
    """A run trained 2 steps: the 'previous complete output' a killed run must keep."""
    run = tmp_path / "run"
    train(tworoom_file, run, resolve("tiny", [*SMALL_MODEL, "train.val_every=1000"],
                                     {"train.max_steps": 2, "seed": 0}),
          device="cpu", progress=False)
    return run


@pytest.mark.parametrize("sig", SIGNALS)
def test_interrupted_training_keeps_a_loadable_state_and_resumes(
    trained: Path, tworoom_file: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """A kill mid-training leaves a last.ckpt that loads with weights_only=True and the
    previous model.safetensors (or a complete new one); the same command then finishes."""
    last = trained / "checkpoints" / "last.ckpt"
    weights = trained / "model.safetensors"
    previous = weights.read_bytes()
    stamp = last.stat().st_mtime_ns
    args = _train_args(tworoom_file, trained, TRAIN_STEPS)
    child = Child(args, tmp_path / "train.log")
    wait_until(lambda: last.is_file() and last.stat().st_mtime_ns != stamp, child)
    time.sleep(0.3)
    interrupt(child, sig)

    if last.exists():
        step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
        assert 2 <= step <= TRAIN_STEPS
    if weights.read_bytes() != previous:
        load_checkpoint(trained)  # a new one must be complete
    if sig == signal.SIGINT:  # (a killed trainer's lock file stays, but binds nobody)
        assert not (trained / ".lock").exists()

    done = subprocess.run([*LEWM, *args], capture_output=True, text=True, env=ENV, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["steps"] == TRAIN_STEPS
    assert parts(trained) == []
    assert not (trained / ".lock").exists()
    load_checkpoint(trained)


# eval


EVAL = ["--device", "cpu", "--no-progress", "--name", "r", "--split", "all"]
SLOW_EVAL = ["--episodes", "8", "--solver", "cem", "--batch", "2", "plan.samples=64",
             "plan.elites=8", "plan.iterations=10"]
SLOWER_EVAL = ["--episodes", "30", "--solver", "cem", "--batch", "2", "plan.samples=64",
               "plan.elites=8", "plan.iterations=30"]


def eval_folder(run: Path, name: str = "r") -> dict[str, bytes]:
    folder = run / "eval" / name
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def consistent(files: dict[str, bytes]) -> dict:
    """The result JSON, after checking that the GIFs beside it are exactly its episodes'."""
    assert "result.json" in files, f"no result.json among {sorted(files)}"
    result = json.loads(files["result.json"])
    gifs = result["settings"]["eval"]["gifs"]
    expected = {f"episode_{e['index']:03d}_{'ok' if e['success'] else 'fail'}.gif"
                for e in result["episodes"] if e["index"] < gifs}
    assert set(files) - {"result.json"} == expected, "GIFs and result.json do not match"
    return result


@pytest.fixture
def evaluated(tmp_path: Path, small_run: Path, tworoom_file: Path) -> Path:
    """A run with a previous complete evaluation named r (2 episodes)."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    done = subprocess.run([*LEWM, "eval", str(run), "--data", str(tworoom_file), *EVAL,
                           "--episodes", "2", "--solver", "random"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return run


@pytest.mark.parametrize("sig", SIGNALS)
def test_interrupted_eval_leaves_the_old_or_the_new_result(
    evaluated: Path, tworoom_file: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """RUN/eval/r/ is the old folder or the new one, each with its own GIFs."""
    old = eval_folder(evaluated)
    assert len(consistent(old)["episodes"]) == 2
    child = Child(["eval", str(evaluated), "--data", str(tworoom_file), *EVAL, *SLOW_EVAL],
                  tmp_path / "eval.log")
    wait_until(lambda: bool(list((evaluated / "eval").glob(".r.*.part"))), child)
    time.sleep(0.5)
    interrupt(child, sig)

    now = eval_folder(evaluated)
    result = consistent(now)
    assert now == old or len(result["episodes"]) == 8, "neither the old nor the new result"
    if sig == signal.SIGINT:
        assert parts(evaluated / "eval") == []
    names = {p.name for p in (evaluated / "eval").iterdir()}
    assert names <= {"r", ".r.lock"} | {p.name for p in parts(evaluated / "eval")}


# one writer at a time


def second_writer_is_refused(
    first_args: list[str], lock: Path, second_args: list[str], log: Path
) -> None:
    """Start ``first_args``, wait for it to hold ``lock``, run ``second_args`` alongside: the
    second must exit 2 naming the first one's pid, and the first must still succeed."""
    first = Child(first_args, log)
    wait_until(lock.exists, first)
    second = subprocess.run([*LEWM, *second_args], capture_output=True, text=True, env=ENV,
                            timeout=120)
    text = " ".join((second.stdout + second.stderr).split())
    still_running = first.running()
    code, output = first.wait()
    assert still_running, "the first writer ended before the second was refused"
    assert second.returncode == 2, text[-1500:]
    assert f"in use by process {first.pid}" in text, text[-1500:]
    assert not any(bad in text for bad in BAD_OUTPUT)
    assert code == 0, output[-2000:]
    assert not lock.exists()


def test_a_second_trainer_of_a_run_is_refused_and_the_first_finishes(
    tmp_path: Path, tworoom_file: Path
) -> None:
    """Two `lewm train` on one folder: the second exits 2 naming the first one's pid."""
    run = tmp_path / "run"
    args = _train_args(tworoom_file, run, FIRST_TRAIN_STEPS)
    second_writer_is_refused(args, run / ".lock", args, tmp_path / "first.log")
    assert json.loads((run / "train_summary.json").read_text())["steps"] == FIRST_TRAIN_STEPS


def test_a_second_eval_of_the_same_name_is_refused_and_the_first_finishes(
    tmp_path: Path, small_run: Path, tworoom_file: Path
) -> None:
    """Two `lewm eval RUN --name r` at once: the second exits 2 naming the first's pid."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    base = ["eval", str(run), "--data", str(tworoom_file), *EVAL]
    second_writer_is_refused([*base, *SLOWER_EVAL], run / "eval" / ".r.lock",
                             [*base, "--episodes", "1", "--solver", "random"],
                             tmp_path / "first.log")
    assert len(consistent(eval_folder(run))["episodes"]) == 30
