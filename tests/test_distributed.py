"""Data-parallel training: SIGReg over ranks equals SIGReg over the whole batch (MODEL.md §5.1),
DDP runs end to end on CPU processes (gloo), and bad scaling settings are refused early."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SMALL_MODEL
from torch import nn

import lewm.model.sigreg as sigreg_module
from lewm.checkpoint import load_checkpoint
from lewm.config import ConfigError, resolve
from lewm.model import SIGReg
from lewm.train.distributed import check_scaling, direction_generator

WORLD = 2
TIME_STEPS, BATCH, IN_DIM, DIM = 2, 32, 6, 8
LEWM = str(Path(sys.executable).with_name("lewm"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inputs() -> tuple[torch.Tensor, nn.Linear]:
    """A batch (T, N, IN_DIM) and a layer before SIGReg, standing in for the encoder."""
    torch.manual_seed(0)
    return torch.randn(TIME_STEPS, BATCH, IN_DIM), nn.Linear(IN_DIM, DIM)


def sigreg_and_grad(x: torch.Tensor, layer: nn.Linear) -> tuple[float, torch.Tensor]:
    layer.zero_grad()
    loss = SIGReg(num_projections=32)(layer(x), direction_generator(0, 7))
    loss.backward()
    return loss.item(), layer.weight.grad.clone()


def detached_global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The bug class of MODEL.md §5.1.4: other ranks' sums enter as constants."""
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return tensor + (total - tensor.detach())


def sigreg_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, layer = inputs()
        mine = x.chunk(WORLD, dim=1)[rank]
        results = {}
        for name, reduce in (("differentiable", sigreg_module.global_sum),
                             ("detached", detached_global_sum)):
            sigreg_module.global_sum = reduce
            loss, grad = sigreg_and_grad(mine, layer)
            dist.all_reduce(grad)  # what DDP does with parameter gradients: average them
            results[name] = (loss, grad / WORLD)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sigreg_over_ranks_equals_sigreg_over_the_whole_batch(tmp_path):
    mp.spawn(sigreg_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD)
    x, layer = inputs()
    loss, grad = sigreg_and_grad(x, layer)
    for rank in range(WORLD):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        rank_loss, rank_grad = results["differentiable"]
        assert rank_loss == pytest.approx(loss, rel=1e-5)
        torch.testing.assert_close(rank_grad, grad, rtol=1e-5, atol=1e-5)
        # A non-differentiable all-reduce gets the same loss but 1/WORLD of the gradient,
        # so the check above is one that a wrong implementation fails.
        wrong_loss, wrong_grad = results["detached"]
        assert wrong_loss == pytest.approx(loss, rel=1e-5)
        assert not torch.allclose(wrong_grad, grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(wrong_grad, grad / WORLD, rtol=1e-4, atol=1e-6)


def test_directions_follow_seed_and_step_only():
    a, b = direction_generator(3, 10), direction_generator(3, 10)
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))
    for other in (direction_generator(3, 11), direction_generator(4, 10),
                  direction_generator(3, 10, stream=1)):
        assert not torch.equal(torch.randn(4, generator=direction_generator(3, 10)),
                               torch.randn(4, generator=other))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.strategy=fsdp"], "train.strategy='fsdp': expected one of"),
        (["train.devices=0"], "train.devices=0: expected an integer >= 1"),
        ([f"train.devices={(os.cpu_count() or 1) + 1}"], "this machine has"),
        (["train.devices=2", "train.batch_size=7"], "must split evenly over 2 processes"),
    ],
)
def test_bad_scaling_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_scaling(resolve("tiny", overrides).train, torch.device("cpu"))


@pytest.mark.slow
def test_two_process_ddp_run_trains_resumes_and_exports(tmp_path, tworoom_file):
    run = tmp_path / "run"

    def lewm_train(steps: int) -> dict:
        command = [
            LEWM, "train", "--data", str(tworoom_file), "--out", str(run), "--preset", "tiny",
            "--device", "cpu", "--no-progress", "--max-steps", str(steps), *SMALL_MODEL,
            "train.devices=2", "train.strategy=ddp", "train.val_every=100",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads((run / "train_summary.json").read_text())

    assert lewm_train(2)["steps"] == 2
    summary = lewm_train(4)
    assert (summary["steps"], summary["steps_this_call"]) == (4, 2)
    loaded = load_checkpoint(run)
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())
