"""Shared helpers for the hostile-input and fault tests: snapshots of folders that catch any
change (bytes, type, mode, new or vanished entries), payloads that run code when unpickled,
and helpers that keep a bad input from hanging or damaging the machine."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

# One entry per path: (file type, permission bits, sha256 | link target | "").
Entry = tuple[int, int, str]
Snapshot = dict[str, Entry]

# Address-space limit for cases that could otherwise allocate huge tensors: far above what
# importing lewm and refusing the input need, far below the machine's memory.
ISOLATED_MEMORY = 6 << 30


def _entry(path: Path) -> Entry:
    st = os.lstat(path)
    kind, mode = stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return kind, mode, digest.hexdigest()
    if stat.S_ISLNK(st.st_mode):
        return kind, mode, os.readlink(path)
    return kind, mode, ""  # folders, FIFOs, devices: type and mode only (never opened)


def snapshot(*roots: Path) -> Snapshot:
    """Every entry under ``roots`` (and the roots), without following links or opening
    anything but regular files."""
    out: Snapshot = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        out[str(root)] = _entry(root)
        if not stat.S_ISDIR(os.lstat(root).st_mode):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in (*dirnames, *filenames):
                path = Path(dirpath) / name
                out[str(path)] = _entry(path)
    return out


def describe_changes(before: Snapshot, after: Snapshot) -> str:
    """A short list of what was added, removed or changed, for an assertion message."""
    lines = [f"new: {p}" for p in sorted(set(after) - set(before))]
    lines += [f"gone: {p}" for p in sorted(set(before) - set(after))]
    lines += [f"changed: {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return "; ".join(lines[:10]) + (f" (+{len(lines) - 10} more)" if len(lines) > 10 else "")


class ShellPayload:
    """Unpickling this runs a shell command: it creates ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch '{self.target}'",)


class FifoWatchdog:
    """Unblocks a reader stuck opening a FIFO: after ``after`` seconds it keeps opening the
    FIFO for writing (which ends the reader's open with an empty pipe) and records that it
    had to, so a command that blocked on the FIFO fails its test instead of hanging it."""

    def __init__(self, path: Path, after: float = 5.0) -> None:
        self.path = path
        self.after = after
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self._stop.wait(self.after):
            return
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader yet (ENXIO), or the FIFO is gone
                pass
            else:
                self.fired = True
                os.close(fd)
            self._stop.wait(0.05)

    def __enter__(self) -> FifoWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


HOLD_OPEN = """
import sys, h5py
f = h5py.File(sys.argv[1], "a")
print("ready", flush=True)
sys.stdin.read()
f.close()
"""


@contextlib.contextmanager
def held_for_writing(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the HDF5 file ``path`` open for writing (HDF5 file lock)."""
    env = {k: v for k, v in os.environ.items() if k != "HDF5_USE_FILE_LOCKING"}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_isolated(
    args: list[str], cwd: Path, timeout: float = 40, prelude: str = ""
) -> tuple[int, str, float]:
    """``lewm ARGS`` in a child process under an address-space limit: (exit code, stdout and
    stderr, seconds). For inputs that, if not refused early, would allocate more memory than
    the machine has; the limit turns that into a failure instead of an out-of-memory kill.
    ``prelude`` is Python run before the command (e.g. to register a test-only ViT size)."""
    script = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({ISOLATED_MEMORY}, {ISOLATED_MEMORY}))\n"
        f"{prelude}\n"
        "from lewm.cli import main\n"
        "sys.argv = ['lewm', *sys.argv[1:]]\n"
        "main()\n"
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    start = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True,
            timeout=timeout, env=env,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else ""
        return -1, f"TIMED OUT after {timeout:.0f} s; " + output, time.monotonic() - start
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start
