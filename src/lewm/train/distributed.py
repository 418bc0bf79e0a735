"""What data-parallel training needs beyond Lightning: checked settings, the per-rank batch,
and SIGReg directions that every rank draws alike.

``train.batch_size`` is the *global* batch: with R ranks each loads batch_size / R clips and
SIGReg sums its statistics over all of them (MODEL.md §5.1), so a run on R devices optimises
the same objective, with the same λ and learning rate, as a run on one.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from lewm.config import ConfigError, TrainConfig

# ddp launches one process per device by re-running the command (or joins the processes
# torchrun/SLURM started). ddp_spawn is not offered: it pickles trainer, model and loaders
# into fresh processes, which failed here ("bad value(s) in fds_to_keep"), and adds nothing.
STRATEGIES = ("auto", "ddp")


def world_size(t: TrainConfig) -> int:
    """Processes taking part in training: devices per node times nodes."""
    return t.devices * t.num_nodes


def check_scaling(t: TrainConfig, device: torch.device) -> None:
    """Refuse settings Lightning would reject late (after loading data) or obscurely."""
    if t.strategy not in STRATEGIES:
        raise ConfigError(
            f"train.strategy={t.strategy!r}: expected one of {', '.join(STRATEGIES)} "
            "(ddp for several devices or nodes, also under torchrun and SLURM)"
        )
    available = {
        "cuda": torch.cuda.device_count() if device.type == "cuda" else 0,
        "mps": 1,
        "cpu": os.cpu_count() or 1,
    }.get(device.type, 1)
    if t.devices > available:
        raise ConfigError(
            f"train.devices={t.devices}: this machine has {available} {device.type} "
            f"device(s){' (CPU cores)' if device.type == 'cpu' else ''}"
        )
    if device.type == "mps" and world_size(t) > 1:
        raise ConfigError("MPS trains on one device only; set train.devices=1 train.num_nodes=1")
    ranks = world_size(t)
    if t.batch_size % ranks:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is the global batch and must split evenly over "
            f"{ranks} processes (train.devices x train.num_nodes)"
        )


def per_rank_batch(t: TrainConfig) -> int:
    return t.batch_size // world_size(t)


def direction_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for SIGReg's directions at optimiser step ``step``.

    Seeded from the run seed and the step counter, which Lightning keeps identical on every
    rank (and restores on resume), so all ranks project onto the same directions without a
    broadcast. ``stream`` separates uses (training, validation) that share step numbers.
    """
    state = np.random.SeedSequence([seed, stream, step]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))
