"""LeWorldModel: a JEPA trained end to end from pixels with two terms (arXiv 2603.19312).

    z_t  = projector(encoder(o_t))                                  encode
    ẑ_t+1 = pred_proj(predictor(z_≤t, action_encoder(a_≤t)))[t]      predict
    L    = ‖ẑ − z‖² + λ · SIGReg(z)                                  loss

There is no stop-gradient, EMA target or reconstruction: the prediction term alone would let
every embedding collapse to one point, and SIGReg forbids exactly that by requiring the
embeddings of a batch to look like an isotropic Gaussian.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lewm.model.config import ModelConfig
from lewm.model.heads import ActionEncoder, Projector
from lewm.model.predictor import Predictor
from lewm.model.protocol import count_parameters
from lewm.model.sigreg import SIGReg
from lewm.model.vit import ViT

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LeWM(nn.Module):
    """The world model of MODEL.md §2–6; ``cfg`` fixes every size.

    Top-level submodules carry the released checkpoint's names, and all but the encoder (whose
    fused qkv differs from Hugging Face's separate q/k/v) match its state-dict keys too.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ViT(
            cfg.image_size, cfg.patch_size, cfg.enc_dim, cfg.enc_depth, cfg.enc_heads, cfg.enc_mlp
        )
        self.projector = Projector(cfg.enc_dim, cfg.proj_hidden, cfg.embed_dim)
        self.action_encoder = ActionEncoder(cfg.block_dim, cfg.action_hidden, cfg.embed_dim)
        self.predictor = Predictor(
            cfg.embed_dim,
            cfg.history,
            cfg.pred_depth,
            cfg.pred_heads,
            cfg.pred_dim_head,
            cfg.pred_mlp,
            cfg.pred_dropout,
        )
        self.pred_proj = Projector(cfg.embed_dim, cfg.proj_hidden, cfg.embed_dim)
        self.sigreg = SIGReg(cfg.sigreg_projections, cfg.sigreg_knots)
        self.register_buffer(
            "pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False
        )

    def encode(self, pixels: Tensor, proprio: Tensor | None = None) -> Tensor:
        """Frames (..., 3, H, W), uint8 or float in [0, 1] → embeddings (..., D).

        All leading dims go through the projector's BatchNorm as one batch, as in training.
        LeWM learns from pixels alone: ``proprio`` is accepted, as the protocol asks, and
        not read.
        """
        size = self.cfg.image_size
        if pixels.dim() < 3 or pixels.shape[-3] != 3:
            raise ValueError(f"pixels must be (..., 3, H, W), got shape {tuple(pixels.shape)}")
        if pixels.shape[-2:] != (size, size):
            h, w = pixels.shape[-2:]
            raise ValueError(
                f"pixels are {h}x{w} but the model expects {size}x{size} (model.image_size)"
            )
        if pixels.dtype == torch.uint8:
            x = pixels.float() / 255
        else:
            if not torch.isfinite(pixels).all():
                raise ValueError("pixels contain NaN or inf; expected floats in [0, 1] or uint8")
            x = pixels.float()
        x = ((x - self.pixel_mean) / self.pixel_std).to(self.encoder.patch_embed.weight.dtype)
        cls = self.encoder(x.reshape(-1, 3, size, size))[:, 0]
        return self.projector(cls).reshape(*pixels.shape[:-3], -1)

    def embed_actions(self, blocks: Tensor) -> Tensor:
        """Action blocks (B, T, block_dim) → conditioning embeddings (B, T, D)."""
        if blocks.dim() != 3 or blocks.shape[-1] != self.cfg.block_dim:
            raise ValueError(
                f"action blocks must be (B, T, {self.cfg.block_dim}) (frameskip × action_dim), "
                f"got shape {tuple(blocks.shape)}"
            )
        return self.action_encoder(blocks)

    def predict(self, z: Tensor, blocks: Tensor) -> Tensor:
        """Embeddings (B, T ≤ history, D) and their blocks → (B, T, D); output t predicts z_t+1."""
        return self.pred_proj(self.predictor(z, self.embed_actions(blocks)))

    def rollout(self, z_ctx: Tensor, blocks: Tensor) -> Tensor:
        """Imagine H steps ahead from h real embeddings (MODEL.md §6) → (B, H, D).

        ``blocks`` (B, h-1+H, block_dim) holds the h-1 blocks executed between the context
        frames, then the H candidate blocks: block i always pairs with embedding i. Each step
        feeds the last ``history`` embeddings (real or imagined) with their own blocks and keeps
        the last output. A context of batch 1 is shared by all B candidates. Meant for eval
        mode: only the kept token goes through ``pred_proj``.
        """
        if z_ctx.dim() != 3 or blocks.dim() != 3:
            raise ValueError(
                f"rollout takes z_ctx (B, h, D) and blocks (B, h-1+H, block_dim), got "
                f"{tuple(z_ctx.shape)} and {tuple(blocks.shape)}"
            )
        h, history = z_ctx.shape[1], self.cfg.history
        horizon = blocks.shape[1] - (h - 1)
        if not 1 <= h <= history:
            raise ValueError(f"rollout takes 1 to {history} context embeddings (history), got {h}")
        if horizon < 1:
            raise ValueError(
                f"{h} context embeddings need at least {h} blocks ({h - 1} executed + 1 "
                f"candidate), got {blocks.shape[1]}"
            )
        z = z_ctx.expand(blocks.shape[0], -1, -1) if z_ctx.shape[0] == 1 else z_ctx
        return self.predictor.rollout(z, self.embed_actions(blocks), horizon, self.pred_proj)

    def teacher_forced(self, pixels: Tensor, blocks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Embeddings of a batch of clips, their one-step predictions and the targets.

        ``pixels`` (B, T, 3, H, W) and ``blocks`` (B, T, block_dim) with T = num_steps. The
        targets keep their gradient: a regulariser, not a stop-gradient, prevents collapse.
        """
        cfg = self.cfg
        if pixels.dim() != 5 or pixels.shape[1] != cfg.num_steps:
            raise ValueError(
                f"pixels must be (B, {cfg.num_steps}, 3, H, W) (num_steps = history + "
                f"num_preds), got shape {tuple(pixels.shape)}"
            )
        if blocks.shape[:2] != pixels.shape[:2]:
            raise ValueError(
                f"blocks {tuple(blocks.shape)} must match pixels {tuple(pixels.shape)} "
                "in batch and time"
            )
        z = self.encode(pixels)
        pred = self.predict(z[:, : cfg.history], blocks[:, : cfg.history])
        return z, pred, z[:, cfg.num_preds : cfg.num_preds + cfg.history]

    def loss(
        self,
        pixels: Tensor,
        blocks: Tensor,
        generator: torch.Generator | None = None,
        proprio: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Teacher-forced prediction loss plus λ·SIGReg on a batch of clips (MODEL.md §4);
        ``proprio`` is not read."""
        z, pred, target = self.teacher_forced(pixels, blocks)
        pred_loss = F.mse_loss(pred, target)
        sigreg = self.sigreg(z.transpose(0, 1), generator)
        loss = pred_loss + self.cfg.sigreg_lambda * sigreg
        return {"loss": loss, "pred_loss": pred_loss, "sigreg": sigreg, "z": z.detach()}

    def planning_cost(self, predicted: Tensor, z_goal: Tensor) -> Tensor:
        """MODEL.md §6: squared distance of the last imagined embedding to the goal's."""
        return ((predicted[..., -1, :] - z_goal) ** 2).sum(dim=-1)

    def param_counts(self) -> dict[str, int]:
        return count_parameters(
            self, ("encoder", "projector", "action_encoder", "predictor", "pred_proj")
        )
