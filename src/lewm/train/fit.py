"""The engineering of training: run folder, data loaders, Lightning trainer, resume, and the
final export of a self-describing checkpoint.

A run is a folder. Re-running the same command resumes from ``checkpoints/last.ckpt``,
which is replaced atomically, so a run killed at any moment resumes; a finished run only
re-exports. After training, BatchNorm running statistics are re-estimated on training clips,
because with momentum 0.1 they lag far behind the weights in short runs and make eval-mode
embeddings (the ones planning uses) worse than the training ones.

With several processes (``train.devices``/``train.num_nodes``, Lightning DDP) every process
runs this function; only global rank 0 writes checkpoints, re-estimates BatchNorm and exports,
and the others receive its summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset, Subset

from lewm import hub
from lewm.checkpoint import CONFIG, WEIGHTS, save_checkpoint
from lewm.config import ConfigError, RunConfig
from lewm.data import ClipDataset, EpisodeStore, Normalizer, open_store, split_episodes
from lewm.data.clips import proprio_width
from lewm.device import resolve_device, train_precision
from lewm.envs import get_env_spec, proprio_columns
from lewm.io import atomic_write_text, exclusive, name_write_error, remove_stale_parts
from lewm.model.diagnostics import (
    ACTIVE_STD,
    active_dims,
    effective_rank,
    embedding_std,
    recalibrate_batchnorm,
)
from lewm.track import closing_trackers, require_trackers, training_loggers
from lewm.train.checkpoint_io import AtomicCheckpointIO, read_training_checkpoint
from lewm.train.distributed import check_scaling, per_rank_batch
from lewm.train.guard import NonFiniteLossError
from lewm.train.module import WorldModelModule, copy_last_error

SUMMARY = "train_summary.json"
CHECKPOINT_DIR, LAST = "checkpoints", "last.ckpt"
# Held by the process that trains the run (see lewm.io.exclusive); gone when it ends.
LOCK = ".lock"
# Training data that does not name its environment is taken to be TwoRoom, with a warning.
DEFAULT_ENV = "tworoom"

# Lightning messages that say nothing about this run: a product tip, a PyTorch deprecation
# inside Lightning, and a notice that resuming reuses the run's own checkpoint folder.
_NOISE = ("litlogger", "LeafSpec", "exists and is not empty")
warnings.filterwarnings("ignore", message=".*(LeafSpec|exists and is not empty).*")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _NOISE)


def _quiet_lightning() -> None:
    for handler in logging.getLogger("lightning.pytorch").handlers:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())


def prepare_config(cfg: RunConfig, store: EpisodeStore) -> RunConfig:
    """Fill the fields the data decides (env, action and proprio widths) and check the ones
    it constrains."""
    if store.env_name is not None:
        if cfg.env and cfg.env != store.env_name:
            raise ConfigError(
                f"{store.path}: holds {store.env_name} episodes but env={cfg.env} was given; "
                "drop env= or train on data of that environment"
            )
        cfg.env = store.env_name
    elif not cfg.env:
        cfg.env = DEFAULT_ENV
        warnings.warn(
            f"{store.path} does not name its environment; training for env={cfg.env!r} "
            "(pass env=NAME to choose another)",
            stacklevel=2,
        )
    spec = get_env_spec(cfg.env)
    cfg.model.action_dim = store.action_dim
    cfg.model.frameskip = spec.frameskip
    cfg.data.render = store.render
    if cfg.model.uses_proprio:
        try:
            cfg.model.proprio_dim = proprio_width(store, spec.proprio_keys)
        except ValueError as exc:
            raise ConfigError(
                f"{exc}; model.kind={cfg.model.kind} reads proprioception: collect it, or "
                "train without it (model.proprio_embed=0)"
            ) from None
    if store.image_size != cfg.model.image_size:
        raise ConfigError(
            f"{store.path}: images are {store.image_size}x{store.image_size} but preset "
            f"{cfg.preset!r} expects {cfg.model.image_size}x{cfg.model.image_size}; collect with "
            f"--resolution {cfg.model.image_size} or override model.image_size={store.image_size}"
        )
    return cfg


def _check_resume(run_dir: Path, cfg: RunConfig, last: Path) -> int:
    """The step a re-run resumes from (0 for a fresh run), after checking that the folder's
    trained state belongs to ``cfg``'s model.

    Only trained state binds a folder to a model: a first run that failed before its first
    checkpoint (a bad override, say) leaves a config.json that the corrected command replaces.
    Resuming on other data or towards fewer steps is allowed, but said.
    """
    saved_path = run_dir / CONFIG
    trained = last.is_file() or (run_dir / WEIGHTS).is_file()
    if not trained:
        return 0
    if not saved_path.is_file():
        raise ConfigError(
            f"{run_dir}: holds trained state but no {CONFIG}, so its model is unknown; "
            "use a new --out folder"
        )
    saved = RunConfig.load(saved_path)
    if dataclasses.asdict(saved.model) != dataclasses.asdict(cfg.model):
        raise ConfigError(
            f"{saved_path}: this run folder holds a model with a different configuration; "
            "use a new --out folder (or the same preset and overrides to resume)"
        )
    step = _checkpoint_meta(last)["global_step"]
    if saved.data.path and saved.data.path != cfg.data.path:
        warnings.warn(
            f"resuming {run_dir} at step {step} on {cfg.data.path}; it was trained on "
            f"{saved.data.path} so far",
            stacklevel=3,
        )
    if step and step >= cfg.train.max_steps:
        warnings.warn(
            f"{run_dir} is already at step {step}, at or past train.max_steps="
            f"{cfg.train.max_steps}: nothing to train, only the checkpoint is exported again",
            stacklevel=3,
        )
    return step


def _is_global_zero() -> bool:
    """Whether this process is the one that owns the run folder (rank 0 under DDP, launched by
    Lightning, torchrun or SLURM; always true for a single process)."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return os.environ[name] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _loaders(
    cfg: RunConfig, store: EpisodeStore, norm: Normalizer, batch_size: int, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders with ``batch_size`` clips per batch (per process).

    Batches hold uint8 frames (4x fewer bytes to move than float) and are normalised on the
    device; for CUDA they are pinned, so the copy overlaps compute.
    """
    train_eps, val_eps = split_episodes(store.num_episodes, cfg.data.val_fraction, cfg.seed)
    m = cfg.model

    def loader(episodes: Any, shuffle: bool, seed: int, limit: int = 0) -> DataLoader:
        dataset: Dataset = ClipDataset(
            store, episodes, m.num_steps, m.frameskip, norm, proprio_columns(cfg)
        )
        if len(dataset) < cfg.train.batch_size:
            raise ConfigError(
                f"{store.path}: only {len(dataset)} clips of {m.num_steps} frames x frameskip "
                f"{m.frameskip} in this split, fewer than one batch of {cfg.train.batch_size}; "
                "collect more or longer episodes, or lower train.batch_size"
            )
        if limit and len(dataset) > limit:
            picked = np.random.default_rng(seed).choice(len(dataset), limit, replace=False)
            dataset = Subset(dataset, np.sort(picked).tolist())
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=True,
            num_workers=cfg.data.num_workers,
            multiprocessing_context=store.worker_start if cfg.data.num_workers else None,
            persistent_workers=cfg.data.num_workers > 0,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
        )

    # Validation always scores the same fixed sample of held-out clips, so its curve moves
    # only when the model does; under DDP the processes share that sample out.
    val_clips = cfg.train.val_batches * cfg.train.batch_size
    return loader(train_eps, True, cfg.seed), loader(val_eps, False, cfg.seed + 1, val_clips)


def _batches(loader: DataLoader, n: int, device: torch.device) -> Iterator[tuple[Any, ...]]:
    for batch in itertools.islice(loader, n):
        proprio = batch.get("proprio")
        yield (
            batch["pixels"].to(device),
            batch["action"].to(device),
            None if proprio is None else proprio.to(device),
        )


@torch.no_grad()
def heldout_errors(
    module: WorldModelModule, loader: DataLoader, n: int, device: torch.device
) -> dict:
    """Eval-mode 1-step prediction error on held-out clips, next to copy-last-embedding, and
    the spread of their embeddings: a collapsed model predicts perfectly and is useless, so
    the two are only read together."""
    model = module.model.eval()
    m = model.cfg
    pred, copy, latents = [], [], []
    for pixels, action, proprio in _batches(loader, n, device):
        z = model.encode(pixels, proprio)
        ẑ = model.predict(z[:, : m.history], action[:, : m.history])
        target = z[:, m.num_preds : m.num_preds + m.history]
        pred.append(torch.mean((ẑ - target) ** 2).item())
        copy.append(copy_last_error(z, m.history, m.num_preds).item())
        latents.append(z[:, 0].float().cpu())
    z = torch.cat(latents)
    return {
        "pred_mse": sum(pred) / len(pred),
        "copy_last_mse": sum(copy) / len(copy),
        "emb_std": embedding_std(z),
        "emb_active_dims": active_dims(z),
        "emb_rank": effective_rank(z),
        "emb_dim": int(z.shape[-1]),
    }


def collapse_warning(heldout: dict) -> str | None:
    """A one-line verdict when no direction of the embeddings keeps a useful spread."""
    if heldout["emb_active_dims"] > 0:
        return None
    return (
        f"embeddings collapsed: std {heldout['emb_std']:.3g}, 0 of {heldout['emb_dim']} "
        f"directions with std >= {ACTIVE_STD} (a unit Gaussian has all of them); the 1-step "
        f"error {heldout['pred_mse']:.3g} is small because there is nothing left to predict"
    )


class _SaveAtEnd(Callback):
    """Checkpoint the final step too, whatever ``ckpt_every``: a re-run then only re-exports."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)


def _checkpoint_meta(path: Path) -> dict[str, int]:
    """Step and skipped-step count of a Lightning checkpoint, without reading its tensors."""
    if not path.is_file():
        return {"global_step": 0, "nonfinite_steps": 0}
    ckpt = read_training_checkpoint(path, mmap=True)
    return {
        "global_step": int(ckpt["global_step"]),
        "nonfinite_steps": int(ckpt.get("nonfinite_steps", 0)),
    }


def train(
    data: str | Path,
    run_dir: str | Path,
    cfg: RunConfig,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a run and export its checkpoint; returns the training summary.

    Everything that can be refused (device, data, config) is checked before the run folder is
    touched; the folder is then held (:func:`lewm.io.exclusive`) until training ends, so a
    second ``lewm train`` on it is refused instead of silently losing one run's result.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir}: is a file, expected a run folder (--out)")
    torch_device = resolve_device(device)
    # Resolved once, here: the saved config then says what the run computed in.
    cfg.train.precision = train_precision(cfg.train.precision, torch_device)
    check_scaling(cfg.train, torch_device)
    require_trackers(cfg.train.logger)
    store = open_store(data, cache=cfg.data.cache)
    cfg = prepare_config(cfg, store)
    cfg.data.path = hub.record(data)
    norm = Normalizer.fit(store, ("action", *proprio_columns(cfg)))
    loaders = _loaders(cfg, store, norm, per_rank_batch(cfg.train), torch_device)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # Built (and its external weights read) before the folder is touched; a resumed run's
    # checkpoint holds every weight, so it does not read them again.
    module = WorldModelModule(cfg, pretrained=not (run_dir / CHECKPOINT_DIR / LAST).is_file())
    hold = exclusive(run_dir / LOCK, f"run folder {run_dir}") if _is_global_zero() else (
        contextlib.nullcontext()
    )
    try:
        with hold:
            return _fit(run_dir, cfg, module, store, norm, loaders, torch_device, progress)
    except OSError as exc:
        raise name_write_error(exc, run_dir) from None


def _fit(
    run_dir: Path,
    cfg: RunConfig,
    module: WorldModelModule,
    store: EpisodeStore,
    norm: Normalizer,
    loaders: tuple[DataLoader, DataLoader],
    torch_device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    ckpt_dir = run_dir / CHECKPOINT_DIR
    last = ckpt_dir / LAST
    remove_stale_parts(last)
    first_step = _check_resume(run_dir, cfg, last)
    cfg.save(run_dir / CONFIG)
    _quiet_lightning()

    t = cfg.train
    loggers = training_loggers(run_dir, cfg, owner=_is_global_zero())
    trainer = pl.Trainer(
        accelerator=torch_device.type,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        plugins=[AtomicCheckpointIO()],
        precision=t.precision,
        max_steps=t.max_steps,
        max_time={"minutes": t.max_minutes} if t.max_minutes > 0 else None,
        gradient_clip_val=t.grad_clip,
        val_check_interval=t.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every,
        logger=loggers,
        callbacks=[
            ModelCheckpoint(
                dirpath=ckpt_dir, filename="last", every_n_train_steps=t.ckpt_every,
                save_top_k=1, enable_version_counter=False,
            ),
            _SaveAtEnd(last),
        ],
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=False,
    )
    resume = str(last) if last.is_file() else None
    start = time.perf_counter()
    try:
        with closing_trackers(loggers):
            trainer.fit(module, *loaders, ckpt_path=resume)
    except SystemExit:
        # Lightning turns Ctrl-C into exit status 1 after its own clean-up; lewm reports an
        # interrupt as one, with the status 130 every other command uses.
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    except NonFiniteLossError as exc:
        if not last.is_file():
            raise NonFiniteLossError(f"{exc}; no checkpoint was written yet") from None
        raise NonFiniteLossError(
            f"{exc}; last good checkpoint: {last} (step {_checkpoint_meta(last)['global_step']}), "
            "which re-running the same command resumes from; consider a lower train.lr or "
            "train.precision=32-true"
        ) from None
    train_seconds = time.perf_counter() - start

    summary = None
    if trainer.is_global_zero:
        summary = _finish(run_dir, module, cfg, norm, store, torch_device, first_step, last)
        summary["train_seconds_this_call"] = train_seconds
        summary["frames_per_second"] = (
            summary["steps_this_call"] * t.batch_size * cfg.model.num_steps
            / max(train_seconds, 1e-9)
        )
        if summary["steps_this_call"] == 0:  # a re-export: keep the throughput measured
            summary["frames_per_second"] = _previous_throughput(run_dir / SUMMARY)
        atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2))
    return trainer.strategy.broadcast(summary, src=0)


def _previous_throughput(path: Path) -> float | None:
    """The frames/s a run's earlier summary measured, if it has a readable one."""
    try:
        value = json.loads(path.read_text()).get("frames_per_second")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _finish(
    run_dir: Path,
    module: WorldModelModule,
    cfg: RunConfig,
    norm: Normalizer,
    store: EpisodeStore,
    device: torch.device,
    first_step: int,
    last: Path,
) -> dict[str, Any]:
    """Re-estimate BatchNorm, export the checkpoint and summarise (global rank 0 only).

    Uses loaders with the global batch, so the statistics match a single-process run.
    """
    t = cfg.train
    train_loader, val_loader = _loaders(cfg, store, norm, t.batch_size, device)
    module.to(device)
    before = heldout_errors(module, val_loader, t.val_batches, device)
    recalibrate_batchnorm(module.model, _batches(train_loader, t.bn_recalib_batches, device))
    after = heldout_errors(module, val_loader, t.val_batches, device)
    save_checkpoint(run_dir, module.model.cpu(), cfg, norm)
    meta = _checkpoint_meta(last)
    warning = collapse_warning(after)
    if warning:
        warnings.warn(warning, stacklevel=1)
    return {
        "model": {
            "kind": cfg.model.kind,
            "note": cfg.model.note,
            "parameters": module.model.param_counts(),
        },
        "collapsed": warning is not None,
        "steps": meta["global_step"],
        "steps_this_call": meta["global_step"] - first_step,
        "nonfinite_steps": meta["nonfinite_steps"],
        "heldout_before_bn_recalibration": before,
        "heldout_after_bn_recalibration": after,
    }
