"""Collection and episode files under hostile input and faults (issue 16): an existing output
is replaced only when asked and only if it is a regular file, one collection writes a file at
a time, a full or read-only disk and Ctrl-C end in one line with nothing half-written, and
non-finite or damaged data is refused with a message that names the file."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import ctrl_c_as_at_a_terminal
from typer.testing import CliRunner

from lewm.cli import app
from lewm.data import DataFileError, EpisodeStore, collect
from lewm.data.collect import EpisodeRecorder
from lewm.envs import get_env_spec

runner = CliRunner()
TINY = ["--episodes", "2", "--resolution", "64"]


def one_line_failure(args: list[str]) -> str:
    """Run ``lewm ARGS``, expect exit 2 with a plain message; return it on one line."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return " ".join(result.output.split())


def lewm(*args: str, **kwargs) -> subprocess.Popen:
    """``lewm ARGS`` in a new process, with this environment (PYTHONPATH included)."""
    return subprocess.Popen(
        [sys.executable, "-m", "lewm.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
        **kwargs,
    )


def leftovers(folder: Path) -> list[str]:
    """Hidden files a writer leaves: temporary parts and lock files."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a disk that fills after a few dozen 64 px episodes (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# 1. An existing --out is replaced only with --overwrite, and only if it is a regular file.


def test_collect_refuses_an_existing_file_unless_told_to_overwrite(tmp_path):
    out = tmp_path / "data.h5"
    out.write_bytes(b"precious")
    message = one_line_failure(["collect", "tworoom", *TINY, "--out", str(out)])
    assert "data.h5" in message and "--overwrite" in message
    assert out.read_bytes() == b"precious"
    result = runner.invoke(app, ["collect", "tworoom", *TINY, "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    with EpisodeStore(out) as store:
        assert store.num_episodes == 2
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["folder", "symbolic link", "fifo"])
def test_collect_never_replaces_what_is_not_a_regular_file(tmp_path, kind):
    out = tmp_path / "data.h5"
    target = tmp_path / "target.h5"
    target.write_bytes(b"precious")
    if kind == "folder":
        out.mkdir()
    elif kind == "symbolic link":
        out.symlink_to(target)
    else:
        os.mkfifo(out)
    message = one_line_failure(["collect", "tworoom", *TINY, "--out", str(out), "--overwrite"])
    assert "data.h5" in message and ("regular files" in message)
    assert out.is_dir() if kind == "folder" else True
    assert out.is_symlink() if kind == "symbolic link" else True
    assert target.read_bytes() == b"precious"


def test_collect_refuses_to_overwrite_the_dataset_it_replays(tmp_path):
    source = collect("tworoom", 2, tmp_path / "source.h5", resolution=64, progress=False)
    before = source.read_bytes()
    (tmp_path / "link.h5").symlink_to("source.h5")
    (tmp_path / "sub").mkdir()
    other_spelling = tmp_path / "sub" / ".." / "source.h5"
    message = one_line_failure(["collect", "tworoom", *TINY, "--out", str(other_spelling),
                                "--overwrite", "--policy", f"replay:{tmp_path / 'link.h5'}"])
    assert "source.h5" in message and "replay" in message
    assert source.read_bytes() == before


def test_shard_output_is_checked_on_the_shard_file(tmp_path):
    shard = tmp_path / "data-00001-of-00002.h5"
    shard.write_bytes(b"precious")
    message = one_line_failure(["collect", "tworoom", *TINY, "--out", str(tmp_path / "data.h5"),
                                "--shard", "1/2"])
    assert "data-00001-of-00002.h5" in message and "--overwrite" in message
    assert shard.read_bytes() == b"precious"


# 2. One collection at a time per output; what a killed one left is cleared.


def test_a_second_collection_of_the_same_file_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "data.h5"
    started, release = threading.Event(), threading.Event()
    record = EpisodeRecorder.__call__

    def wait_in_the_background(self, seed, index):
        if threading.current_thread() is not threading.main_thread() and index == 1:
            started.set()
            release.wait(60)
        return record(self, seed, index)

    monkeypatch.setattr(EpisodeRecorder, "__call__", wait_in_the_background)
    errors: list[BaseException] = []

    def first() -> None:
        try:
            collect("tworoom", 2, out, resolution=64, progress=False)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(60), errors
        with pytest.raises(ValueError, match=rf"in use by process {os.getpid()}\b"):
            collect("tworoom", 2, out, resolution=64, progress=False, overwrite=True)
    finally:
        release.set()
        thread.join(60)
    assert errors == []
    with EpisodeStore(out) as store:
        assert store.num_episodes == 2
    assert leftovers(tmp_path) == []


def test_collect_removes_parts_that_killed_collections_left(tmp_path):
    stale = tmp_path / ".data.h5.x1y2z3.part"
    stale.write_bytes(b"half an HDF5 file")
    unrelated = tmp_path / ".other.h5.x1y2z3.part"
    unrelated.write_bytes(b"not ours")
    collect("tworoom", 1, tmp_path / "data.h5", resolution=64, progress=False)
    assert not stale.exists()
    assert unrelated.exists()


@pytest.mark.slow
def test_sigkill_leaves_the_old_file_and_the_next_collection_cleans_up(tmp_path):
    out = tmp_path / "data.h5"
    out.write_bytes(b"old contents")
    proc = lewm("collect", "tworoom", "--episodes", "5000", "--out", str(out), "--overwrite")
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.name.endswith(".part") for p in tmp_path.iterdir()):
            time.sleep(1.0)
            break
        time.sleep(0.05)
    proc.kill()
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL, output
    assert out.read_bytes() == b"old contents"
    assert any(name.endswith(".part") for name in leftovers(tmp_path))
    collect("tworoom", 1, out, resolution=64, progress=False, overwrite=True)
    assert leftovers(tmp_path) == []
    with EpisodeStore(out) as store:
        assert store.num_episodes == 1


# 3, 4. A full or read-only disk: one line naming the file, nothing half-written.


def test_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    import lewm.data.store as store_module

    monkeypatch.setattr(store_module, "_free_bytes", lambda folder: 4 * 2**20)
    out = tmp_path / "data.h5"
    out.write_bytes(b"old contents")
    message = one_line_failure(["collect", "tworoom", *TINY, "--out", str(out), "--overwrite"])
    assert message.endswith(f"{out}: no space left on device"), message
    assert out.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


FULL_DISK_RUNS = {
    "probe": [],
    # The free-space probe blinded: HDF5 itself meets the full disk (another process filled
    # it between two checks), which used to end in a segmentation fault.
    "hdf5": ["-c", "import sys, runpy, lewm.data.store as s; s._free_bytes = lambda f: 2**60; "
             "sys.argv[0] = 'lewm'; runpy.run_module('lewm.cli', run_name='__main__')"],
}


@pytest.mark.slow
@pytest.mark.parametrize("how", list(FULL_DISK_RUNS))
def test_full_disk_in_a_real_process(mounted, how):
    out = mounted / "data.h5"
    out.write_bytes(b"old contents")
    args = ["collect", "tworoom", "--episodes", "300", "--out", str(out), "--overwrite"]
    command = FULL_DISK_RUNS[how] or ["-m", "lewm.cli"]
    result = subprocess.run([sys.executable, *command, *args], capture_output=True, text=True,
                            env=os.environ.copy(), timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "Exception ignored" not in output, output
    errors = [line for line in output.splitlines() if "error" in line]
    assert errors == [f"error: {out}: no space left on device"], output
    assert out.read_bytes() == b"old contents"
    assert sorted(p.name for p in mounted.iterdir()) == ["data.h5"]


def test_read_only_disk_is_one_line_naming_the_file(mounted):
    subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
    out = mounted / "data.h5"
    message = one_line_failure(["collect", "tworoom", *TINY, "--out", str(out)])
    assert message.endswith(f"{out}: read-only file system"), message


# 5. Non-finite values are refused, naming file, column, count and first episode/step.


def with_value(source: Path, folder: Path, column: str, row: int, value: float) -> Path:
    path = folder / f"{column}_{row}.h5"
    shutil.copy(source, path)
    with h5py.File(path, "a") as f:
        data = f[column][()]
        data[row] = value
        f[column][...] = data
    return path


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_actions_are_refused_at_load(tmp_path, tworoom_file, value):
    with EpisodeStore(tworoom_file) as store:
        episode = 1
        row = int(store.ep_offset[episode]) + 3
    path = with_value(tworoom_file, tmp_path, "action", row, value)
    with pytest.raises(DataFileError) as caught:
        EpisodeStore(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "'action'" in message
    assert "1 rows" in message and f"episode {episode}, step 3" in message


def test_inf_on_an_episodes_last_action_is_refused(tmp_path, tworoom_file):
    with EpisodeStore(tworoom_file) as store:
        last = int(store.ep_offset[0] + store.ep_len[0] - 1)
    path = with_value(tworoom_file, tmp_path, "action", last, np.inf)
    with pytest.raises(DataFileError, match="'action'"):
        EpisodeStore(path)


def test_non_finite_state_is_refused_where_it_is_read(tmp_path, tworoom_file):
    with EpisodeStore(tworoom_file) as store:
        row = int(store.ep_offset[2]) + 5
    path = with_value(tworoom_file, tmp_path, "proprio", row, np.nan)
    with EpisodeStore(path) as store:  # the file opens: only some callers use proprio
        store.require_finite(["proprio"], np.array([row - 1, row + 1]))
        with pytest.raises(DataFileError, match=r"'proprio'.*episode 2, step 5"):
            store.require_finite(["proprio"])
        with pytest.raises(DataFileError, match=r"proprio.*'proprio'.*episode 2, step 5"):
            get_env_spec("tworoom").read_state(store, np.array([row, row + 1]))


def test_inspect_counts_nan_and_inf_in_every_float_column(tmp_path, tworoom_file):
    path = with_value(tworoom_file, tmp_path, "action", 4, np.inf)
    with h5py.File(path, "a") as f:
        proprio = f["proprio"][()]
        proprio[7] = np.inf
        proprio[9, 0] = np.nan
        f["proprio"][...] = proprio
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert "'action': 2 inf values (first: row 4)" in output
    assert "'proprio': 1 NaN and 2 inf values (first: row 7)" in output


# 6. Damaged, locked or non-HDF5 files: one line that names the file.


def test_inspect_truncated_and_corrupt_files(tmp_path, tworoom_file):
    data = tworoom_file.read_bytes()
    truncated = tmp_path / "cut.h5"
    truncated.write_bytes(data[:5000])
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(data[:48] + b"\xff" * 4000 + data[4048:])  # the root group's header
    for path in (truncated, corrupt):
        message = one_line_failure(["inspect", str(path)])
        assert message.startswith(f"error: {path}:") and "truncated or corrupt" in message


def test_inspect_distinguishes_missing_files_from_non_hdf5_ones(tmp_path):
    notes = tmp_path / "notes.h5"
    notes.write_text("hello")
    assert one_line_failure(["inspect", str(notes)]).endswith(
        f"{notes}: not an HDF5 file (expected an episode .h5 file)"
    )
    missing = tmp_path / "missing.h5"
    assert one_line_failure(["inspect", str(missing)]).endswith(f"{missing}: no such file")


@pytest.mark.slow
def test_inspect_a_file_another_process_is_writing(tmp_path, tworoom_file):
    path = tmp_path / "busy.h5"
    shutil.copy(tworoom_file, path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'a'); "
         "print('open', flush=True); time.sleep(120)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        message = one_line_failure(["inspect", str(path)])
        assert message.startswith(f"error: {path}:") and "another process" in message
    finally:
        holder.kill()
        holder.wait()


# 7. Arguments that would allocate without bound are refused before any work.


@pytest.fixture
def no_environment(monkeypatch):
    """Building an environment fails the test: a refused argument must stop before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("an environment was built for arguments that must be refused")

    monkeypatch.setattr(EpisodeRecorder, "__init__", refuse)


@pytest.mark.parametrize("resolution", ["100000", "8", "0"])
def test_resolution_is_bounded(tmp_path, no_environment, resolution):
    message = one_line_failure(["collect", "tworoom", "--episodes", "1", "--resolution",
                                resolution, "--out", str(tmp_path / "x.h5")])
    assert "--resolution" in message and "16 to 1024" in message
    assert list(tmp_path.iterdir()) == []


def test_workers_are_capped_at_the_available_cpus(tmp_path, no_environment):
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    message = one_line_failure(["collect", "tworoom", "--episodes", "1", "--workers",
                                str(cpus + 1), "--out", str(tmp_path / "x.h5")])
    assert "--workers" in message and f"1 to {cpus}" in message
    assert list(tmp_path.iterdir()) == []


# 8. Ctrl-C: exit 130, no traceback, the old file as it was.


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_is_quiet_and_keeps_the_old_file(tmp_path, workers):
    if workers == "2" and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    out = tmp_path / "data.h5"
    collect("tworoom", 1, out, resolution=64, progress=False)
    before = out.read_bytes()
    proc = lewm("collect", "tworoom", "--episodes", "5000", "--out", str(out), "--overwrite",
                "--workers", workers, start_new_session=True,
                preexec_fn=ctrl_c_as_at_a_terminal)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.name.endswith(".part") for p in tmp_path.iterdir()):
            break
        time.sleep(0.05)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(60)
    # The whole group: a worker left behind would hold the output pipe open for ever.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    output = proc.communicate()[0]
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "Exception ignored" not in output, output
    assert out.read_bytes() == before
    assert leftovers(tmp_path) == []
