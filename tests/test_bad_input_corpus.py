"""A corpus of bad inputs, generated from one pristine workspace, run through every command
that reads them: damaged datasets, run folders, official checkpoints, configs and arguments.

Every case must end in one clear line: exit code 2 (or 1 where ``lewm inspect`` reports
layout problems), no traceback, the offending file or field named, and nothing on disk
changed: no byte, type or mode of an existing file, and no new file left behind.
Nothing large is shipped: each case copies what it needs from the workspace and damages it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from conftest import SMALL_DINOWM, SMALL_MODEL
from hostile import (
    FifoWatchdog,
    ShellPayload,
    describe_changes,
    held_for_writing,
    run_isolated,
    snapshot,
)
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import lewm.interop.official as official_module
from lewm.cli import app

runner = CliRunner()
# The small model's encoder as an official ViT size, so the small run exports and imports.
MICRO_VIT = (32, 1, 2, 64)
# The child of an isolated case knows the small model's encoder as an official size too.
ISOLATED_PRELUDE = (
    f"import lewm.interop.official as o; o.VIT_SIZES['micro'] = {MICRO_VIT!r}"
)
# An expected text, or a tuple of alternatives of which one must appear.
Expect = str | tuple[str, ...]
FAST_EVAL = ["--episodes", "1", "--solver", "random", "--device", "cpu", "--no-progress"]
# Takes long enough only if it blocked: on a FIFO, on a lock, or on a huge allocation.
FAST_SECONDS = 30.0


@dataclass(frozen=True)
class Workspace:
    """The pristine inputs every case copies from; no case may change them."""

    root: Path
    data: Path
    run: Path
    official: Path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A 30-episode TwoRoom file (enough held-out episodes to probe), a small run
    trained 2 steps, and its official export."""
    from lewm.config import resolve
    from lewm.data import collect
    from lewm.interop import export_official
    from lewm.train.fit import train

    patch = pytest.MonkeyPatch()
    patch.setitem(official_module.VIT_SIZES, "micro", MICRO_VIT)
    root = tmp_path_factory.mktemp("pristine")
    data = root / "good.h5"
    collect("tworoom", 30, data, resolution=64, seed=0, progress=False)
    run = root / "run"
    train(data, run, resolve("tiny", [*SMALL_MODEL, "train.max_steps=2"]), device="cpu",
          progress=False)
    official = root / "official"
    export_official(run, official)
    yield Workspace(root, data, run, official)
    patch.undo()


@dataclass
class Invocation:
    """One command line and what its failure must look like."""

    args: list[str]
    expect: tuple[Expect, ...]
    codes: tuple[int, ...] = (2,)
    isolated: bool = False  # in a child process under a memory limit (huge allocations)
    sentinel: Path | None = None  # a file that exists only if untrusted code ran
    fifo: Path | None = None  # a FIFO the command must not block on
    watch: tuple[Path, ...] = ()  # paths outside the case folder that must not change
    check: Callable[[], str | None] | None = None  # a further post-condition; text if broken


Builder = Callable[[Workspace, Path, contextlib.ExitStack], Invocation]


@dataclass(frozen=True)
class Case:
    id: str
    build: Builder


def _invoke(inv: Invocation, folder: Path) -> tuple[int, str, float]:
    """Run the command in-process (or isolated); (exit code, output, seconds)."""
    if inv.isolated:
        return run_isolated(inv.args, folder, prelude=ISOLATED_PRELUDE)
    start = time.monotonic()
    if inv.fifo is not None:
        with FifoWatchdog(inv.fifo) as dog:
            result = runner.invoke(app, inv.args)
        if dog.fired:
            return result.exit_code, "BLOCKED ON THE FIFO; " + result.output, FAST_SECONDS + 1
    else:
        result = runner.invoke(app, inv.args)
    output = result.output
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        output += f"\nUNCAUGHT {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return result.exit_code, output, time.monotonic() - start


def check_case(case: Case, workspace: Workspace, folder: Path) -> None:
    folder.mkdir()
    with contextlib.ExitStack() as stack:
        inv = case.build(workspace, folder, stack)
        roots = (folder, workspace.root, *inv.watch)
        before = snapshot(*roots)
        code, output, seconds = _invoke(inv, folder)
        after = snapshot(*roots)
    flat = " ".join(output.split())
    problems = []
    if code not in inv.codes:
        problems.append(f"exit code {code}, expected {' or '.join(map(str, inv.codes))}")
    for bad in ("Traceback", "Exception ignored", "UNCAUGHT", "BLOCKED", "TIMED OUT"):
        if bad in output:
            problems.append(f"output has {bad!r}")
    for expected in inv.expect:
        options = (expected,) if isinstance(expected, str) else expected
        if not any(o.lower() in flat.lower() for o in options):
            problems.append(f"output lacks {' | '.join(map(repr, options))}")
    if before != after:
        problems.append("files changed: " + describe_changes(before, after))
    if inv.sentinel is not None and os.path.lexists(inv.sentinel):
        problems.append("the payload ran: untrusted pickle was executed")
    if seconds > FAST_SECONDS:
        problems.append(f"took {seconds:.0f} s, expected to fail fast")
    if inv.check is not None and (broken := inv.check()):
        problems.append(broken)
    assert not problems, "; ".join(problems) + f"\n--- output ---\n{flat[:1500]}"


# ---------------------------------------------------------------------------------------
# Datasets: each damaged file through every command that reads a dataset.


MakeData = Callable[[Path, Path, contextlib.ExitStack], None]


def _copy_edit(edit: Callable[[h5py.File], None]) -> MakeData:
    def make(good: Path, dst: Path, stack: contextlib.ExitStack) -> None:
        shutil.copy(good, dst)
        with h5py.File(dst, "a") as f:
            edit(f)

    return make


def _replace(f: h5py.File, name: str, data: Any) -> None:
    del f[name]
    f.create_dataset(name, data=data)


def _set_rows(name: str, change: Callable[[np.ndarray], None]) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        values = f[name][()]
        change(values)
        _replace(f, name, values)

    return edit


def _bytes(make: Callable[[bytes], bytes]) -> MakeData:
    def build(good: Path, dst: Path, stack: contextlib.ExitStack) -> None:
        dst.write_bytes(make(good.read_bytes()))

    return build


def _flip_header(data: bytes) -> bytes:
    out = bytearray(data)
    for offset in range(8, 48):  # the superblock after its signature: sizes, addresses
        out[offset] ^= 0xFF
    return bytes(out)


def _nan_mid_episode(a: np.ndarray) -> None:
    a[5, 0] = np.nan  # episode 0, step 5: not the layout's final NaN


def _inf_action(a: np.ndarray) -> None:
    a[3, 1] = np.inf


def _inf_state(a: np.ndarray) -> None:
    a[:, 0] = np.inf  # every row, so whichever rows a command uses contain it


def _zero_length(a: np.ndarray) -> None:
    a[3] = 0


def _shift_offset(a: np.ndarray) -> None:
    a[2] += 1


def _longer_last(a: np.ndarray) -> None:
    a[-1] += 5


def _group(name: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[name]
        f.create_group(name).create_dataset("x", data=np.zeros(3))

    return edit


def _unknown_filter(f: h5py.File) -> None:
    pixels = f["pixels"][()]
    del f["pixels"]
    f.create_dataset("pixels", data=pixels, chunks=(1, *pixels.shape[1:]), compression=40000,
                     allow_unknown_filter=True)


def _empty_layout(f: h5py.File) -> None:
    for name in list(f):
        ds = f[name]
        _replace(f, name, np.zeros((0, *ds.shape[1:]), dtype=ds.dtype))


def _fifo(good: Path, dst: Path, stack: contextlib.ExitStack) -> None:
    os.mkfifo(dst)


def _dangling(good: Path, dst: Path, stack: contextlib.ExitStack) -> None:
    dst.symlink_to(dst.parent / "gone.h5")


def _locked(good: Path, dst: Path, stack: contextlib.ExitStack) -> None:
    shutil.copy(good, dst)
    stack.enter_context(held_for_writing(dst))


def _nothing(good: Path, dst: Path, stack: contextlib.ExitStack) -> None:
    pass


@dataclass(frozen=True)
class BadData:
    name: str
    make: Callable[[Path, Path, contextlib.ExitStack], None]
    expect: tuple[Expect, ...] = ()  # besides the file's name
    inspect_codes: tuple[int, ...] = (1,)  # 1: inspect reports a problem; 2: cannot open
    commands: tuple[str, ...] = ()  # () = every command that reads a dataset
    fifo: bool = False


UNOPENABLE = (2,)
BAD_DATA = [
    BadData("missing", _nothing, inspect_codes=UNOPENABLE),
    BadData("empty", _bytes(lambda b: b""), inspect_codes=UNOPENABLE),
    BadData("text", _bytes(lambda b: b"episode,action\n1,0.5\n"), inspect_codes=UNOPENABLE),
    BadData("truncated", _bytes(lambda b: b[: len(b) // 2]), inspect_codes=(1, 2)),
    BadData("cut_at_4k", _bytes(lambda b: b[:4096]), inspect_codes=(1, 2)),
    BadData("bitflip_header", _bytes(_flip_header), inspect_codes=UNOPENABLE),
    BadData("directory", lambda g, d, s: d.mkdir(), inspect_codes=UNOPENABLE),
    *(BadData(f"no_{c}", _copy_edit(lambda f, c=c: f.__delitem__(c)), (c,))
      for c in ("pixels", "action", "ep_len", "ep_offset", "step_idx", "ep_idx")),
    BadData("float_pixels", _copy_edit(
        lambda f: _replace(f, "pixels", f["pixels"][()].astype(np.float32))), ("pixels",)),
    BadData("int_action", _copy_edit(
        lambda f: _replace(f, "action", np.nan_to_num(f["action"][()]).astype(np.int64))),
        ("action",)),
    BadData("nonsquare_pixels", _copy_edit(
        lambda f: _replace(f, "pixels", f["pixels"][:, :, :48])), ("pixels",)),
    BadData("rgba_pixels", _copy_edit(
        lambda f: _replace(f, "pixels", np.concatenate(
            [f["pixels"][()], f["pixels"][:, :, :, :1]], axis=3))), ("pixels",)),
    BadData("action_1d", _copy_edit(lambda f: _replace(f, "action", f["action"][:, 0])),
            ("action",)),
    BadData("nan_action_mid_episode", _copy_edit(_set_rows("action", _nan_mid_episode)),
            ("action",)),
    BadData("inf_action", _copy_edit(_set_rows("action", _inf_action)), ("action",)),
    BadData("inf_proprio", _copy_edit(_set_rows("proprio", _inf_state)), ("proprio",),
            commands=("eval", "probe", "collect-replay", "inspect")),
    BadData("ep_len_zero", _copy_edit(_set_rows("ep_len", _zero_length)), ("ep_len",)),
    BadData("ep_len_too_long", _copy_edit(_set_rows("ep_len", _longer_last)), ("ep_len",)),
    BadData("ep_len_float", _copy_edit(
        lambda f: _replace(f, "ep_len", f["ep_len"][()].astype(np.float32))), ("ep_len",)),
    BadData("ep_offset_inconsistent", _copy_edit(_set_rows("ep_offset", _shift_offset)),
            ("ep_offset",)),
    BadData("step_idx_short", _copy_edit(lambda f: _replace(f, "step_idx", f["step_idx"][:-1])),
            ("step_idx",)),
    BadData("step_idx_scalar", _copy_edit(lambda f: _replace(f, "step_idx", np.int32(0))),
            ("step_idx",)),
    BadData("action_is_group", _copy_edit(_group("action")), ("action",)),
    BadData("no_episodes", _copy_edit(_empty_layout), ("ep_len",)),
    BadData("unknown_filter", _copy_edit(_unknown_filter), ("pixels", "40000")),
    BadData("fifo", _fifo, inspect_codes=UNOPENABLE, fifo=True),
    BadData("dangling_symlink", _dangling, inspect_codes=UNOPENABLE),
    BadData("held_by_writer", _locked, (("another process", "in use", "locked"),),
            inspect_codes=UNOPENABLE),
]
DATA_COMMANDS = ("train", "eval", "inspect", "collect-replay", "import-checkpoint", "probe",
                 "straightness", "rollout-error")


def _copy_run(ws: Workspace, folder: Path) -> Path:
    run = folder / "run_under_test"  # a name no message contains by chance
    shutil.copytree(ws.run, run, symlinks=True)
    return run


def _data_args(command: str, ws: Workspace, folder: Path, data: Path) -> list[str]:
    """The command line that makes ``command`` read the dataset ``data``."""
    d = str(data)
    if command == "train":
        return ["train", "--data", d, "--out", str(folder / "newrun"), "--device", "cpu",
                "--no-progress", "--max-steps", "2", *SMALL_MODEL]
    if command == "inspect":
        return ["inspect", d]
    if command == "collect-replay":
        return ["collect", "tworoom", "--episodes", "2", "--policy", f"replay:{d}",
                "--out", str(folder / "replayed.h5")]
    if command == "import-checkpoint":
        return ["import-checkpoint", str(ws.official), "--out", str(folder / "imported"),
                "--data", d, "--env", "tworoom"]
    run = str(_copy_run(ws, folder))
    if command == "eval":
        return ["eval", run, "--data", d, *FAST_EVAL]
    tail = ["--horizon", "2"] if command == "rollout-error" else []
    return [command, run, "--data", d, "--episodes", "3", "--device", "cpu", *tail]


def _data_case(bad: BadData, command: str) -> Case:
    def build(ws: Workspace, folder: Path, stack: contextlib.ExitStack) -> Invocation:
        path = folder / f"{bad.name}.h5"
        bad.make(ws.data, path, stack)
        codes = bad.inspect_codes if command == "inspect" else (2,)
        return Invocation(_data_args(command, ws, folder, path), (path.name, *bad.expect),
                          codes, fifo=path if bad.fifo else None)

    return Case(f"data-{bad.name}-{command}", build)


DATA_CASES = [_data_case(bad, command) for bad in BAD_DATA
              for command in (bad.commands or DATA_COMMANDS)]


# ---------------------------------------------------------------------------------------
# Run folders: each damaged folder through every command that loads a run.


def _edit_json(name: str, edit: Callable[[dict], Any]) -> Callable[[Path, Path], None]:
    def make(run: Path, folder: Path) -> None:
        data = json.loads((run / name).read_text())
        edit(data)
        (run / name).write_text(json.dumps(data))

    return make


def _edit_weights(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path, Path], None]:
    def make(run: Path, folder: Path) -> None:
        state = load_file(str(run / "model.safetensors"))
        edit(state)
        save_file(state, str(run / "model.safetensors"))

    return make


def _reshape_first(state: dict[str, torch.Tensor]) -> None:
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])


def _nan_weights(state: dict[str, torch.Tensor]) -> None:
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 2)
    state[key] = torch.full_like(state[key], float("nan"))


def _write(name: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path, Path], None]:
    def make(run: Path, folder: Path) -> None:
        path = run / name
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)

    return make


def _remove(name: str) -> Callable[[Path, Path], None]:
    return lambda run, folder: (run / name).unlink()


def _malicious_ckpt(run: Path, folder: Path) -> None:
    payload = ShellPayload(folder / "SENTINEL")
    torch.save({"global_step": 1, "state_dict": payload}, run / "checkpoints" / "last.ckpt")


def _set(section: str | None, key: str, value: Any) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        (data[section] if section else data)[key] = value

    return edit


@dataclass(frozen=True)
class BadRun:
    name: str
    make: Callable[[Path, Path], None]  # (copied run folder, case folder)
    expect: tuple[Expect, ...]
    commands: tuple[str, ...]
    isolated: bool = False


READERS = ("eval", "probe", "surprise", "straightness", "rollout-error", "export-checkpoint")
EVERY = (*READERS, "train")
# Random bytes, the same in every run (a failure must reproduce).
RANDOM = np.random.default_rng(0).bytes(4096)
START_OVER = ("delete", "remove", "start over", "new --out")
# Said of a run folder that is a file ("no such run folder" would send a person looking).
NOT_A_FOLDER = ("not a folder", "is a file", "not a directory")
BAD_RUNS = [
    BadRun("missing_folder", lambda r, f: shutil.rmtree(r), ("run_under_test",), READERS),
    BadRun("file_not_folder", lambda r, f: (shutil.rmtree(r), r.write_text("x")),
           ("run_under_test", NOT_A_FOLDER), EVERY),
    BadRun("no_weights", _remove("model.safetensors"), ("model.safetensors",), READERS),
    BadRun("no_config", _remove("config.json"), ("config.json",), EVERY),
    BadRun("no_normalizer", _remove("normalizer.json"), ("normalizer.json",), READERS),
    BadRun("weights_random_bytes", _write("model.safetensors", RANDOM), ("model.safetensors",),
           READERS),
    BadRun("weights_truncated", _write("model.safetensors", lambda b: b[: len(b) // 2]),
           ("model.safetensors",), READERS),
    BadRun("weights_wrong_shape", _edit_weights(_reshape_first), ("model.safetensors",), READERS),
    BadRun("weights_nan", _edit_weights(_nan_weights), ("model.safetensors", "nan"), READERS),
    BadRun("weights_folder", lambda r, f: (_remove("model.safetensors")(r, f),
                                           (r / "model.safetensors").mkdir()),
           ("model.safetensors",), READERS),
    BadRun("config_invalid_json", _write("config.json", b'{"model": {"patch_size": 16,'),
           ("config.json",), EVERY),
    BadRun("config_json_list", _write("config.json", b"[1, 2]"), ("config.json",), EVERY),
    BadRun("config_patch_size_text", _edit_json("config.json", _set("model", "patch_size", "8")),
           ("patch_size",), EVERY),
    BadRun("config_zero_heads", _edit_json("config.json", _set("model", "enc_heads", 0)),
           ("enc_heads",), EVERY),
    BadRun("config_unknown_field", _edit_json("config.json", _set("model", "wings", 2)),
           ("wings",), EVERY),
    BadRun("config_kind_nosuch", _edit_json("config.json", _set("model", "kind", "nosuch")),
           ("model.kind", "nosuch"), EVERY),
    BadRun("config_kind_pldm_with_lewm_weights",
           _edit_json("config.json", _set("model", "kind", "pldm")), ("model.safetensors",),
           READERS),
    BadRun("config_env_nosuch", _edit_json("config.json", _set(None, "env", "nosuch")),
           ("nosuch",), ("eval", "surprise")),  # the commands that build the environment
    BadRun("config_huge_width", _edit_json("config.json", _set("model", "enc_dim", 100_000_000)),
           ("enc_dim",), EVERY, isolated=True),
    BadRun("normalizer_invalid_json", _write("normalizer.json", b"{"), ("normalizer.json",),
           READERS),
    BadRun("normalizer_no_action", _edit_json("normalizer.json", _set(None, "columns", {})),
           ("normalizer.json", "action"), READERS),
    BadRun("normalizer_nan", _edit_json(
        "normalizer.json", lambda d: d["columns"]["action"].update(mean=[float("nan"), 0.0])),
        ("normalizer.json", "action"), READERS),
    BadRun("normalizer_std_zero", _edit_json(
        "normalizer.json", lambda d: d["columns"]["action"].update(std=[0.0, 0.5])),
        ("normalizer.json", "std"), READERS),
    BadRun("ckpt_malicious", _malicious_ckpt, ("last.ckpt", "refused"), ("train",)),
    BadRun("ckpt_random_bytes", _write("checkpoints/last.ckpt", RANDOM),
           ("last.ckpt", START_OVER), ("train",)),
    BadRun("ckpt_truncated", _write("checkpoints/last.ckpt", lambda b: b[: len(b) // 2]),
           ("last.ckpt", START_OVER), ("train",)),
    BadRun("ckpt_empty", _write("checkpoints/last.ckpt", b""), ("last.ckpt", START_OVER),
           ("train",)),
]


def _run_args(command: str, ws: Workspace, folder: Path, run: Path) -> list[str]:
    """The command line that makes ``command`` load the run folder ``run``."""
    r, d = str(run), str(ws.data)
    if command == "train":
        return ["train", "--data", d, "--out", r, "--device", "cpu", "--no-progress",
                "--max-steps", "4", *SMALL_MODEL]
    if command == "eval":
        return ["eval", r, "--data", d, *FAST_EVAL]
    if command == "surprise":
        return ["surprise", r, "--trajectories", "2", "--steps", "4", "--device", "cpu"]
    if command == "export-checkpoint":
        return ["export-checkpoint", r, "--out", str(folder / "exported")]
    tail = ["--horizon", "2"] if command == "rollout-error" else []
    return [command, r, "--data", d, "--episodes", "3", "--device", "cpu", *tail]


def _run_case(bad: BadRun, command: str) -> Case:
    def build(ws: Workspace, folder: Path, stack: contextlib.ExitStack) -> Invocation:
        run = _copy_run(ws, folder)
        bad.make(run, folder)
        return Invocation(_run_args(command, ws, folder, run), bad.expect,
                          isolated=bad.isolated, sentinel=folder / "SENTINEL")

    return Case(f"run-{bad.name}-{command}", build)


RUN_CASES = [_run_case(bad, command) for bad in BAD_RUNS for command in bad.commands]


# ---------------------------------------------------------------------------------------
# Official checkpoints for `lewm import-checkpoint`.


def _official_case(
    name: str,
    damage: Callable[[Path, Path], None],
    expect: tuple[Expect, ...],
    env: str = "tworoom",
    isolated: bool = False,
    out: str = "imported",
) -> Case:
    def build(ws: Workspace, folder: Path, stack: contextlib.ExitStack) -> Invocation:
        src = folder / "official_src"
        shutil.copytree(ws.official, src)
        damage(src, folder)
        args = ["import-checkpoint", str(src), "--out", str(folder / out), "--data",
                str(ws.data), "--env", env]
        return Invocation(args, expect, isolated=isolated, sentinel=folder / "SENTINEL")

    return Case(f"official-{name}", build)


def _official_json(edit: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def damage(src: Path, folder: Path) -> None:
        data = json.loads((src / "config.json").read_text())
        edit(data)
        (src / "config.json").write_text(json.dumps(data))

    return damage


def _official_weights(src: Path, folder: Path) -> None:
    state = torch.load(src / "weights.pt", weights_only=True)
    state["evil"] = ShellPayload(folder / "SENTINEL")
    torch.save(state, src / "weights.pt")


def _official_reshape(src: Path, folder: Path) -> None:
    state = torch.load(src / "weights.pt", weights_only=True)
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = torch.zeros(3, 3)
    torch.save(state, src / "weights.pt")


def _official_out_nonempty(src: Path, folder: Path) -> None:
    (folder / "imported").mkdir()
    (folder / "imported" / "keep.txt").write_text("mine")


def _official_as_file(src: Path, folder: Path) -> None:
    shutil.rmtree(src)
    src.write_text("not a folder")


def _cut(path: str) -> Callable[[Path, Path], None]:
    def damage(src: Path, folder: Path) -> None:
        data = (src / path).read_bytes()
        (src / path).write_bytes(data[: len(data) // 2])

    return damage


OFFICIAL_CASES = [
    _official_case("malicious_weights", _official_weights, ("weights.pt", "refused")),
    _official_case("truncated_weights", _cut("weights.pt"), ("weights.pt",)),
    *(_official_case(f"random_weights_seed{seed}", lambda s, f, seed=seed: (
        s / "weights.pt").write_bytes(np.random.default_rng(seed).bytes(4096)), ("weights.pt",))
      # 17, 54, 62: bytes on which torch.load itself raised IndexError, UnicodeDecodeError
      # and KeyError (found by a search over seeds 0-299).
      for seed in (0, 1, 17, 54, 62)),
    _official_case("no_weights", lambda s, f: (s / "weights.pt").unlink(), ("weights.pt",)),
    _official_case("wrong_shape_weights", _official_reshape, ("weights.pt",)),
    _official_case("no_config", lambda s, f: (s / "config.json").unlink(), ("config.json",)),
    _official_case("config_invalid_json", _cut("config.json"), ("config.json",)),
    _official_case("config_wrong_type", _official_json(
        lambda c: c["predictor"].update(depth="6")), ("predictor.depth",)),
    _official_case("config_huge_width", _official_json(
        lambda c: c["predictor"].update(mlp_dim=100_000_000)), ("mlp_dim",), isolated=True),
    _official_case("env_nosuch", lambda s, f: None, ("nosuch",), env="nosuch"),
    _official_case("out_not_empty", _official_out_nonempty, ("imported",)),
    _official_case("out_is_file", lambda s, f: (f / "imported.txt").write_text("x"),
                   ("imported.txt",), out="imported.txt"),
    _official_case("src_is_file", _official_as_file, ("official_src",)),
]


# ---------------------------------------------------------------------------------------
# Command-line arguments and config overrides.


def _cli(
    name: str,
    args: Callable[[Workspace, Path], list[str]],
    expect: tuple[Expect, ...],
    isolated: bool = False,
    watch: tuple[Path, ...] = (),
    check: Callable[[], str | None] | None = None,
) -> Case:
    def build(ws: Workspace, folder: Path, stack: contextlib.ExitStack) -> Invocation:
        return Invocation(args(ws, folder), expect, isolated=isolated, watch=watch, check=check)

    return Case(f"cli-{name}", build)


def _train(ws: Workspace, folder: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(ws.data), "--out", str(folder / "newrun"), "--device", "cpu",
            "--no-progress", "--max-steps", "2", *SMALL_MODEL, *extra]


def _train_dinowm(ws: Workspace, folder: Path) -> list[str]:
    return ["train", "--data", str(ws.data), "--out", str(folder / "newrun"), "--device", "cpu",
            "--no-progress", "--max-steps", "2", *SMALL_DINOWM]


def _eval(ws: Workspace, folder: Path, *extra: str) -> list[str]:
    return ["eval", str(_copy_run(ws, folder)), "--data", str(ws.data), *FAST_EVAL, *extra]


def _collect(folder: Path, *extra: str) -> list[str]:
    return ["collect", "tworoom", "--episodes", "2", "--out", str(folder / "new.h5"), *extra]


def _existing(ws: Workspace, folder: Path) -> Path:
    shutil.copy(ws.data, folder / "x.h5")
    return folder / "x.h5"


def _devnull_intact() -> str | None:
    mode = os.lstat("/dev/null").st_mode
    return None if stat.S_ISCHR(mode) else "/dev/null is no longer a character device"


HUGE_SEED = str(2**70)
CLI_CASES = [
    _cli("train-seed-negative", lambda w, f: [*_train(w, f), "--seed", "-1"], ("seed",)),
    _cli("train-seed-2^70", lambda w, f: [*_train(w, f), "--seed", HUGE_SEED], ("seed",)),
    _cli("collect-seed-negative", lambda w, f: _collect(f, "--seed", "-1"), ("seed",)),
    _cli("collect-seed-2^70", lambda w, f: _collect(f, "--seed", HUGE_SEED), ("seed",)),
    _cli("eval-seed-negative", lambda w, f: [*_eval(w, f), "--seed", "-1"], ("seed",)),
    _cli("eval-seed-2^70", lambda w, f: [*_eval(w, f), "--seed", HUGE_SEED], ("seed",)),
    _cli("collect-episodes-0", lambda w, f: [*_collect(f), "--episodes", "0"], ("episodes",)),
    _cli("collect-episodes-negative", lambda w, f: [*_collect(f), "--episodes", "-3"],
         ("episodes",)),
    _cli("eval-episodes-0", lambda w, f: [*_eval(w, f), "--episodes", "0"], ("episodes",)),
    _cli("collect-resolution-100000", lambda w, f: _collect(f, "--resolution", "100000"),
         ("resolution",)),
    _cli("collect-resolution-0", lambda w, f: _collect(f, "--resolution", "0"), ("resolution",)),
    _cli("collect-workers-100000", lambda w, f: _collect(f, "--workers", "100000"),
         ("workers",)),
    _cli("collect-workers-0", lambda w, f: _collect(f, "--workers", "0"), ("workers",)),
    _cli("collect-shard-9/8", lambda w, f: _collect(f, "--shard", "9/8"), ("--shard",)),
    _cli("collect-shard-text", lambda w, f: _collect(f, "--shard", "half"), ("--shard",)),
    _cli("collect-unknown-env", lambda w, f: ["collect", "nosuch", "--episodes", "2", "--out",
                                              str(f / "new.h5")], ("nosuch",)),
    _cli("collect-unknown-policy", lambda w, f: _collect(f, "--policy", "bogus"), ("bogus",)),
    _cli("collect-out-existing", lambda w, f: _collect(f, "--out", str(_existing(w, f))),
         ("x.h5", "--overwrite")),
    _cli("collect-out-dev-null", lambda w, f: _collect(f, "--out", "/dev/null", "--overwrite"),
         ("/dev/null",), watch=(Path("/dev/null"),), check=_devnull_intact),
    _cli("collect-out-dev-null-no-overwrite", lambda w, f: _collect(f, "--out", "/dev/null"),
         ("/dev/null",), watch=(Path("/dev/null"),), check=_devnull_intact),
    _cli("collect-out-directory", lambda w, f: (
        (f / "adir").mkdir(), _collect(f, "--out", str(f / "adir"), "--overwrite"))[1],
         ("adir",)),
    _cli("collect-replay-own-source", lambda w, f: _collect(
        f, "--out", str(_existing(w, f)), "--policy", f"replay:{f / 'x.h5'}", "--overwrite"),
         ("x.h5",)),
    _cli("train-max-steps-0", lambda w, f: [*_train(w, f), "--max-steps", "0"],
         (("max_steps", "max-steps"),)),
    # Lightning reads max_steps=-1 as "no limit": isolated, so that it cannot run forever.
    _cli("train-max-steps-negative", lambda w, f: [*_train(w, f), "--max-steps", "-1"],
         (("max_steps", "max-steps"),), isolated=True),
    _cli("train-batch-size-0", lambda w, f: [*_train(w, f), "--batch-size", "0"],
         (("batch_size", "batch-size"),)),
    _cli("train-lr-inf", lambda w, f: _train(w, f, "train.lr=inf"), ("train.lr",)),
    _cli("train-lr-nan", lambda w, f: _train(w, f, "train.lr=nan"), ("train.lr",)),
    _cli("train-lr-0", lambda w, f: _train(w, f, "train.lr=0"), ("train.lr",)),
    _cli("train-lr-negative", lambda w, f: _train(w, f, "train.lr=-1e-3"), ("train.lr",)),
    _cli("train-lr-text", lambda w, f: _train(w, f, "train.lr=fast"), ("train.lr",)),
    _cli("train-patch-size-7", lambda w, f: _train(w, f, "model.patch_size=7"), ("patch_size",)),
    _cli("train-enc-heads-0", lambda w, f: _train(w, f, "model.enc_heads=0"), ("enc_heads",)),
    _cli("train-unknown-override", lambda w, f: _train(w, f, "train.nosuch=1"), ("nosuch",)),
    _cli("train-override-without-value", lambda w, f: _train(w, f, "train.lr"), ("train.lr",)),
    _cli("train-unknown-preset", lambda w, f: [*_train(w, f), "--preset", "huge"], ("huge",)),
    _cli("train-unknown-kind", lambda w, f: [*_train(w, f), "model.kind=nosuch"],
         ("model.kind", "nosuch", "dinowm, lewm, pldm")),
    _cli("train-pldm-field-on-lewm", lambda w, f: [*_train(w, f), "model.std_coeff=2"],
         ("std_coeff",)),
    _cli("train-encoder-weights-missing", lambda w, f: [
        *_train_dinowm(w, f), f"model.encoder_weights={f / 'nope.pth'}"],
         ("nope.pth", "no such file")),
    _cli("train-encoder-weights-garbage", lambda w, f: [
        *_train_dinowm(w, f), f"model.encoder_weights={_existing(w, f)}"], ("x.h5",)),
    _cli("compare-not-a-run", lambda w, f: ["compare", str(w.data.parent), "--out",
                                            str(f / "cmp")], ("config.json",)),
    _cli("train-device-tpu", lambda w, f: [*_train(w, f), "--device", "tpu"], ("tpu",)),
    _cli("train-env-contradicts-file", lambda w, f: _train(w, f, "env=pusht"),
         ("pusht", "tworoom")),
    _cli("train-env-nosuch", lambda w, f: _train(w, f, "env=nosuch"), ("nosuch",)),
    _cli("eval-device-tpu", lambda w, f: [*_eval(w, f), "--device", "tpu"], ("tpu",)),
    _cli("eval-solver-bogus", lambda w, f: [*_eval(w, f), "--solver", "bogus"], ("bogus",)),
    _cli("eval-split-bogus", lambda w, f: [*_eval(w, f), "--split", "bogus"], ("bogus",)),
    _cli("eval-batch-0", lambda w, f: [*_eval(w, f), "--batch", "0"], ("batch",)),
    _cli("eval-name-dotdot", lambda w, f: [*_eval(w, f), "--name", "../config"], ("--name",)),
    _cli("eval-name-absolute", lambda w, f: [*_eval(w, f), "--name", str(f / "abs")],
         ("--name",)),
    _cli("eval-name-empty", lambda w, f: [*_eval(w, f), "--name", ""], ("--name",)),
    _cli("eval-plan-samples-0", lambda w, f: [*_eval(w, f), "--solver", "cem", "plan.samples=0",
                                              "plan.iterations=1"], ("plan.samples",)),
    _cli("eval-plan-elites-over-samples", lambda w, f: [
        *_eval(w, f), "--solver", "cem", "plan.samples=4", "plan.elites=10",
        "plan.iterations=1"], ("elites",)),
    _cli("eval-plan-horizon-0", lambda w, f: [*_eval(w, f), "--solver", "cem", "plan.horizon=0",
                                              "plan.samples=4", "plan.elites=2",
                                              "plan.iterations=1"], ("horizon",)),
    # eval.budget is a real field: the refusal must be about its value, not its name.
    _cli("eval-budget-0", lambda w, f: [*_eval(w, f), "eval.budget=0"],
         ("eval.budget", (">= 1", "at least 1", "> 0", "positive"))),
    _cli("eval-unknown-override", lambda w, f: [*_eval(w, f), "plan.nosuch=3"], ("nosuch",)),
    _cli("surprise-perturb-bogus", lambda w, f: ["surprise", str(_copy_run(w, f)), "--perturb",
                                                 "bogus", "--device", "cpu"], ("bogus",)),
    _cli("surprise-env-mismatch", lambda w, f: ["surprise", str(_copy_run(w, f)), "--env",
                                                "pusht", "--device", "cpu"], ("pusht",)),
    _cli("rollout-error-horizon-0", lambda w, f: [
        "rollout-error", str(_copy_run(w, f)), "--data", str(w.data), "--horizon", "0",
        "--device", "cpu"], ("horizon",)),
    _cli("probe-unknown-target", lambda w, f: [
        "probe", str(_copy_run(w, f)), "--data", str(w.data), "--targets", "nosuch",
        "--device", "cpu"], ("nosuch",)),
    _cli("config-unknown-preset", lambda w, f: ["config", "--preset", "huge"], ("huge",)),
    _cli("params-zero-heads", lambda w, f: ["params", "model.enc_heads=0"], ("enc_heads",)),
    # 99999999 = 3 x 33333333: divisible by the paper preset's 3 heads, so only its size is wrong.
    _cli("params-huge-width", lambda w, f: ["params", "model.enc_dim=99999999"], ("enc_dim",),
         isolated=True),
]

CASES = [*DATA_CASES, *RUN_CASES, *OFFICIAL_CASES, *CLI_CASES]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_in_one_line_and_changes_nothing(
    case: Case, workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bad input: a clear one-line refusal naming what is wrong; no file touched."""
    folder = tmp_path / "case"
    monkeypatch.chdir(tmp_path)
    check_case(case, workspace, folder)


def test_corpus_covers_each_category() -> None:
    """The corpus is the size the hardening issue asked for, in every category."""
    assert len(BAD_DATA) >= 30 and len(DATA_CASES) >= 200
    assert len(BAD_RUNS) >= 20 and len(RUN_CASES) >= 100
    assert len(OFFICIAL_CASES) >= 8 and len(CLI_CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name", ["good", "run"])
def test_the_pristine_workspace_is_accepted(
    name: str, workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same command lines with the undamaged inputs succeed, so a refusal above is caused
    by the damage and not by the command line itself."""
    monkeypatch.chdir(tmp_path)
    if name == "good":
        for command in DATA_COMMANDS:
            folder = tmp_path / command
            folder.mkdir()
            args = _data_args(command, workspace, folder, workspace.data)
            result = runner.invoke(app, args)
            assert result.exit_code == 0, f"{command}: {result.output} {result.exception!r}"
    else:
        for command in EVERY:
            folder = tmp_path / command
            folder.mkdir()
            run = _copy_run(workspace, folder)
            result = runner.invoke(app, _run_args(command, workspace, folder, run))
            assert result.exit_code == 0, f"{command}: {result.output} {result.exception!r}"
