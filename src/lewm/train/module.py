"""The science of training, as a LightningModule: any world model's loss (built by
``model.kind``), its optimiser and schedule, the diagnostics that show collapse or lagging
BatchNorm at a glance, and the guard that skips steps whose loss is not finite."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lewm.config import RunConfig
from lewm.data import find_shards, open_store, pixels_tensor
from lewm.data.clips import frame_rows, heldout_episodes
from lewm.hub import is_hub_path
from lewm.model.diagnostics import (
    active_dims,
    batch_statistics,
    effective_rank,
    embedding_std,
    straightness,
)
from lewm.registry import build_model
from lewm.train.distributed import direction_generator
from lewm.train.guard import NonFiniteGuard

# Held-out episodes whose whole trajectories are embedded at each validation for
# val/straightness: a couple of hundred frames, cheap next to the validation clips.
STRAIGHTNESS_EPISODES = 8
# Generator streams for SIGReg's directions: training steps and validation batches.
TRAIN_STREAM, VAL_STREAM = 0, 1


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Linear warmup from 0, then cosine to 0 at ``total`` (MODEL.md §7), as an LR factor."""
    if step < warmup:
        return step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def copy_last_error(z: torch.Tensor, history: int, num_preds: int) -> torch.Tensor:
    """MSE of predicting each target embedding by the context embedding it follows.

    A world model that cannot beat this baseline has learned nothing about actions, which
    is why it is logged beside every validation prediction error.
    """
    context = z[:, :history]
    target = z[:, num_preds : num_preds + history]
    return F.mse_loss(context, target)


class WorldModelModule(pl.LightningModule):
    """Trains the world model that ``cfg.model.kind`` names; ``pretrained`` loads weights the
    config names from outside the run (DINO-WM's encoder), which a resumed run does not need
    because its checkpoint holds every weight."""

    def __init__(self, cfg: RunConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = build_model(cfg.model, pretrained=pretrained)
        self.guard = NonFiniteGuard(cfg.train.max_nonfinite)
        self._skip_step = False
        self._bn_saved: list[torch.Tensor] = []
        self._straight_frames: list[torch.Tensor] | None = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The model's loss, every named term logged on its own; a non-finite loss is still
        back-propagated (DDP expects every rank to reduce gradients each step) but its
        optimiser step is skipped, on all ranks alike.

        SIGReg's directions come from the step counter, identical on every rank (§5.1).
        """
        self._bn_saved = [b.clone() for b in self._batchnorm_buffers()]
        step = self.global_step
        out = self.model.loss(
            batch["pixels"],
            batch["action"],
            direction_generator(self.cfg.seed, step, TRAIN_STREAM),
            proprio=batch.get("proprio"),
        )
        finite = self.trainer.strategy.reduce_boolean_decision(
            bool(torch.isfinite(out["loss"])), all=True
        )
        self._skip_step = not finite
        self.guard.update(finite, step)
        terms = {f"train/{k}": v for k, v in out.items() if k not in ("z", "loss")}
        self.log_dict(terms, prog_bar=False, on_step=True, on_epoch=False)
        self.log("train/loss", out["loss"], prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/nonfinite_steps", float(self.guard.total), on_step=True, on_epoch=False)
        if finite and step % self.cfg.train.log_every == 0:  # an SVD of NaN would raise
            z = out["z"].float().flatten(0, 1)
            self.log_dict(
                {
                    "train/emb_std": embedding_std(z),
                    "train/emb_rank": effective_rank(z),
                    "train/emb_active_dims": float(active_dims(z)),
                },
                on_step=True,
                on_epoch=False,
            )
        return out["loss"]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip a non-finite step: an optimiser leaves parameters without gradients untouched
        (no update, no weight decay, no moment decay), and clipping ignores them too.

        The forward pass also wrote NaN into BatchNorm's running statistics; they are put
        back here, after backward, which still needs the tensors it saved.
        """
        if self._skip_step:
            optimizer.zero_grad(set_to_none=True)
            for buffer, value in zip(self._batchnorm_buffers(), self._bn_saved, strict=True):
                buffer.copy_(value)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nonfinite_steps"] = self.guard.total

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.guard.total = int(checkpoint.get("nonfinite_steps", 0))

    def _batchnorm_buffers(self) -> list[torch.Tensor]:
        return [
            buffer
            for module in self.model.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            for buffer in module.buffers()
        ]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        with batch_statistics(self.model):
            out = self.model.loss(
                batch["pixels"],
                batch["action"],
                direction_generator(self.cfg.seed, batch_idx, VAL_STREAM),
                proprio=batch.get("proprio"),
            )
        m = self.cfg.model
        self.log_dict(
            {
                "val/loss": out["loss"],
                "val/pred_loss": out["pred_loss"],
                "val/copy_last": copy_last_error(out["z"], m.history, m.num_preds),
            },
            prog_bar=False,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )

    def on_validation_epoch_end(self) -> None:
        """Log val/straightness on whole held-out episodes, one frame per frameskip.

        Clips are too short (history + 1 frames) to have two consecutive velocities, so a
        few validation episodes are read once from the run's data file and embedded whole.
        """
        frames = self._straightness_frames()
        if not frames:
            return
        with batch_statistics(self.model), torch.no_grad():
            z = self.model.encode(torch.cat(frames).to(self.device)).float()
        trajectories = z.split([f.shape[0] for f in frames])
        self.log(
            "val/straightness", straightness(trajectories), on_step=False, on_epoch=True,
            sync_dist=True,
        )

    def _straightness_frames(self) -> list[torch.Tensor]:
        if self._straight_frames is None:
            self._straight_frames = []
            path = self.cfg.data.path
            if path and (is_hub_path(path) or Path(path).exists() or find_shards(path)):
                with open_store(path, cache="none") as store:
                    for episode in heldout_episodes(self.cfg, store)[:STRAIGHTNESS_EPISODES]:
                        rows = frame_rows(store, int(episode), self.cfg.model.frameskip)
                        if rows.size >= 3:
                            self._straight_frames.append(
                                pixels_tensor(store.read("pixels", rows))
                            )
        return self._straight_frames

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own union type
        t = self.cfg.train
        # A frozen part (DINO-WM's encoder) is left out. PLDM's inverse-dynamics head shares
        # the optimiser: AdamW's state is per parameter, so only the gradient clip couples it.
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
        warmup = max(1, int(t.warmup_fraction * t.max_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, t.max_steps, warmup)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
