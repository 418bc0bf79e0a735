"""The science of training, as a LightningModule: the LeWM loss, its optimiser and schedule,
and the diagnostics that show collapse or lagging BatchNorm at a glance."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from lewm.analysis.embed import frame_rows, heldout_episodes, pixels_tensor
from lewm.analysis.straightness import straightness
from lewm.config import RunConfig
from lewm.data import EpisodeStore
from lewm.model import LeWM, batch_statistics, effective_rank, embedding_std

# Held-out episodes whose whole trajectories are embedded at each validation for
# val/straightness: a couple of hundred frames, cheap next to the validation clips.
STRAIGHTNESS_EPISODES = 8


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


class LeWMModule(pl.LightningModule):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = LeWM(cfg.model)
        self.first_step = 0
        self._straight_frames: list[torch.Tensor] | None = None

    def on_train_start(self) -> None:
        self.first_step = self.global_step

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model.loss(batch["pixels"], batch["action"])
        self.log_dict(
            {
                "train/loss": out["loss"],
                "train/pred_loss": out["pred_loss"],
                "train/sigreg": out["sigreg"],
            },
            prog_bar=True,
            on_step=True,
            on_epoch=False,
        )
        if self.global_step % self.cfg.train.log_every == 0:
            z = out["z"].float().flatten(0, 1)
            self.log_dict(
                {"train/emb_std": embedding_std(z), "train/emb_rank": effective_rank(z)},
                on_step=True,
                on_epoch=False,
            )
        return out["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        with batch_statistics(self.model):
            out = self.model.loss(batch["pixels"], batch["action"])
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
        self.log("val/straightness", straightness(trajectories), on_step=False, on_epoch=True)

    def _straightness_frames(self) -> list[torch.Tensor]:
        if self._straight_frames is None:
            self._straight_frames = []
            path = self.cfg.data.path
            if path and Path(path).is_file():
                with EpisodeStore(path, cache="none") as store:
                    for episode in heldout_episodes(self.cfg, store)[:STRAIGHTNESS_EPISODES]:
                        rows = frame_rows(store, int(episode), self.cfg.model.frameskip)
                        if rows.size >= 3:
                            self._straight_frames.append(
                                pixels_tensor(store.read("pixels", rows))
                            )
        return self._straight_frames

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own union type
        t = self.cfg.train
        opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        warmup = max(1, int(t.warmup_fraction * t.max_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, t.max_steps, warmup)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
