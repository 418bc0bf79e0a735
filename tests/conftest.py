"""Fixtures shared by the end-to-end and CLI tests: one small dataset made once a session."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from lewm.data import collect

# A model small enough to train a few steps in seconds on two CPU cores; every field a
# preset has is still exercised.
SMALL_MODEL = [
    "model.patch_size=16",
    "model.enc_dim=32",
    "model.enc_depth=1",
    "model.enc_heads=2",
    "model.enc_mlp=64",
    "model.embed_dim=32",
    "model.proj_hidden=64",
    "model.pred_depth=1",
    "model.pred_heads=2",
    "model.pred_dim_head=16",
    "model.pred_mlp=64",
    "model.action_hidden=32",
    "model.sigreg_projections=64",
    "train.batch_size=8",
    "train.log_every=1",
    "train.val_every=2",
    "train.val_batches=1",
    "train.ckpt_every=2",
    "train.bn_recalib_batches=2",
    "train.precision=32-true",
]

# The DINO-WM-style model at the same scale: a micro DINOv2 (pretrained grid 4) seeing
# 28 px frames, 2x2 patches.
SMALL_DINOWM = [
    "model.kind=dinowm",
    "model.enc_dim=32",
    "model.enc_depth=1",
    "model.enc_heads=2",
    "model.enc_mlp=64",
    "model.enc_pretrain_size=56",
    "model.encoder_size=28",
    "model.pred_depth=1",
    "model.pred_heads=2",
    "model.pred_dim_head=16",
    "model.pred_mlp=64",
    *[o for o in SMALL_MODEL if o.startswith("train.")],
]


def ctrl_c_as_at_a_terminal() -> None:
    """``preexec_fn`` for a child that a test will Ctrl-C: a shell without job control
    starts background commands with SIGINT ignored, Python then installs no Ctrl-C handler,
    and a suite launched as ``(make test &)`` saw an interrupted collect run to the end
    (exit 0). A user's Ctrl-C always reaches a process that listens for it, so the child
    starts with SIGINT neither ignored nor blocked (a mask is inherited too)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.fixture(scope="session")
def tworoom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tworoom.h5"
    collect("tworoom", 12, path, resolution=64, seed=0, workers=1, progress=False)
    return path


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory, tworoom_file: Path) -> Path:
    """A run folder trained for 2 steps of the small model; copy it before changing it."""
    from lewm.config import resolve
    from lewm.train.fit import train

    run = tmp_path_factory.mktemp("small_run") / "run"
    train(tworoom_file, run, resolve("tiny", SMALL_MODEL, {"train.max_steps": 2}),
          device="cpu", progress=False)
    return run


# Pixel-decoder training few enough to take seconds on two busy cores: what the tests
# check is the plumbing.
DECODER_TRAIN = {"steps": 3, "batch_size": 8, "seed": 0}


@pytest.fixture(scope="session")
def decoded_run(small_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the small run with a decoder trained a few steps, and its figures; copy it
    before changing it. Trained on one thread, as test_decoder retrains it to compare
    weights bit for bit (the thread count changes float sums)."""
    import torch

    from lewm.analysis.decoder import train_decoder

    run = tmp_path_factory.mktemp("decoded") / "run"
    shutil.copytree(small_run, run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run, train_decoder(run, **DECODER_TRAIN, progress=False)
    finally:
        torch.set_num_threads(threads)


# A Hugging Face cache entry built by hand (tests never download): one fake commit.
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_to_cache(cache: Path, repo: str, kind: str, files: dict[str, Path]) -> Path:
    """``{cache}/{kind}s--owner--name/{refs/main, snapshots/COMMIT/…}``, as the library
    writes it (files may be plain copies rather than links into blobs/)."""
    root = cache / f"{kind}s--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, snapshot / name)
    return snapshot
