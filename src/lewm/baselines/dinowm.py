"""A DINO-WM-style world model (BASELINES.md §2, the paper's "PreJEPA" baseline).

A frozen DINOv2 turns each frame into patch tokens. The proprioception's embedding is
joined to every patch, and that grid of slots (patch features | proprio embedding) is the
latent. The action block's embedding is joined to every slot of its frame, and a transformer
over the patches of ``history`` frames, attending block-causally (a frame's tokens see their
own and earlier frames), predicts each slot of the next frame. Only the predictor and the
embedders train, on the mean squared error of the slots; the targets are detached, so the
proprio embedder learns only through the predictor's input, as in the reference. Planning
compares the last imagined grid with the goal's: patch features, plus the proprio embedding
(of the first patch, as the reference reads it) weighted by ``proprio_cost``.

The latent is handed out flattened to (..., patches·slot) so that planners and analyses read
it as they read LeWM's vector; it is the planning cost over 256 × 384 numbers instead of 192
that makes this baseline expensive to plan with.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lewm.baselines.dinov2 import DINOv2, DINOv2WeightsError, load_dinov2_weights
from lewm.baselines.dinowm_config import DinoWMConfig
from lewm.model.lewm import IMAGENET_MEAN, IMAGENET_STD
from lewm.model.predictor import CausalAttention, FeedForward
from lewm.model.protocol import count_parameters


class BlockCausalAttention(CausalAttention):
    """The predictor's attention with a block mask instead of a token-causal one."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        dropout_p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class PatchPredictor(nn.Module):
    """Tokens (B, T, P, dim) of T ≤ ``history`` frames → (B, T, P, dim): token (t, p)
    predicts patch p of frame t+1."""

    def __init__(
        self, dim: int, patches: int, history: int, depth: int, heads: int, dim_head: int,
        mlp: int, dropout: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.patches = patches
        self.pos_embedding = nn.Parameter(torch.randn(1, history * patches, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    BlockCausalAttention(dim, heads, dim_head, dropout),
                    FeedForward(dim, mlp, dropout),
                ]
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        b, t, p, d = tokens.shape
        x = tokens.reshape(b, t * p, d) + self.pos_embedding[:, : t * p]
        frame = torch.arange(t, device=x.device).repeat_interleave(p)
        mask = frame[:, None] >= frame[None, :]  # True: may attend
        for attention, feed_forward in self.layers:
            x = x + attention(x, mask)
            x = x + feed_forward(x)
        return self.norm(x).view(b, t, p, d)


class DinoWM(nn.Module):
    def __init__(self, cfg: DinoWMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = DINOv2(
            cfg.enc_dim, cfg.enc_depth, cfg.enc_heads, cfg.enc_mlp, cfg.patch_size,
            cfg.enc_pretrain_size,
        )  # fmt: skip
        self.encoder.requires_grad_(False)
        # A per-step linear map (the reference's Conv1d with kernel 1).
        self.action_encoder = nn.Linear(cfg.block_dim, cfg.action_embed)
        self.proprio_encoder = (
            nn.Linear(cfg.proprio_dim, cfg.proprio_embed) if cfg.uses_proprio else None
        )
        self.predictor = PatchPredictor(
            cfg.token_dim, cfg.patches, cfg.history, cfg.pred_depth, cfg.pred_heads,
            cfg.pred_dim_head, cfg.pred_mlp, cfg.pred_dropout,
        )  # fmt: skip
        self.register_buffer(
            "pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False
        )

    def load_pretrained(self) -> None:
        """Read ``encoder_weights`` (torch-hub .pth, HF safetensors or snapshot folder)."""
        path = self.cfg.encoder_weights
        if not path:
            return
        if not Path(path).exists():
            raise DINOv2WeightsError(
                f"model.encoder_weights={path}: no such file or folder; give a DINOv2 ViT-S/14 "
                "dinov2_vits14_pretrain.pth or facebook/dinov2-small model.safetensors, or "
                "leave it empty for a random frozen encoder"
            )
        load_dinov2_weights(self.encoder, path)

    def train(self, mode: bool = True) -> DinoWM:
        """The frozen encoder stays in eval mode whatever the rest does."""
        super().train(mode)
        self.encoder.eval()
        return self

    def encode(self, pixels: Tensor, proprio: Tensor | None = None) -> Tensor:
        """Frames (..., 3, H, W), uint8 or float in [0, 1], and their z-scored
        proprioception (..., proprio_dim) → flattened slots (..., patches·slot_dim).

        The patch features carry no gradient (the encoder is frozen); the proprio embedding
        does. Without ``proprio``, a model that uses it sees the dataset's mean state (z-score
        0): analyses that read pixels alone, such as probing, then measure what the pixels
        carry rather than reading the agent's position back from its input.
        """
        cfg = self.cfg
        if pixels.dim() < 3 or pixels.shape[-3] != 3:
            raise ValueError(f"pixels must be (..., 3, H, W), got shape {tuple(pixels.shape)}")
        if pixels.shape[-2:] != (cfg.image_size, cfg.image_size):
            h, w = pixels.shape[-2:]
            raise ValueError(
                f"pixels are {h}x{w} but the model expects {cfg.image_size}x{cfg.image_size} "
                "(model.image_size)"
            )
        x = pixels.reshape(-1, 3, cfg.image_size, cfg.image_size)
        x = x.float() / 255 if pixels.dtype == torch.uint8 else x.float()
        with torch.no_grad():
            if cfg.encoder_size != cfg.image_size:
                x = F.interpolate(
                    x, size=(cfg.encoder_size, cfg.encoder_size), mode="bilinear",
                    antialias=True, align_corners=False,
                )  # fmt: skip
            x = (x - self.pixel_mean) / self.pixel_std
            tokens = self.encoder(x.to(self.encoder.cls_token.dtype)).detach()
        tokens = tokens.view(*pixels.shape[:-3], cfg.patches, cfg.enc_dim)
        if self.proprio_encoder is not None:
            tokens = torch.cat([tokens, self._proprio_slot(proprio, tokens)], dim=-1)
        return tokens.flatten(-2)

    def _proprio_slot(self, proprio: Tensor | None, tokens: Tensor) -> Tensor:
        """The proprio embedding copied to every patch: (..., patches, proprio_embed)."""
        lead = tokens.shape[:-2]
        if proprio is None:
            proprio = tokens.new_zeros(*lead, self.cfg.proprio_dim)
        elif proprio.shape != (*lead, self.cfg.proprio_dim):
            raise ValueError(
                f"proprio must be ({', '.join(map(str, lead))}, {self.cfg.proprio_dim}) like "
                f"the frames (model.proprio_dim), got shape {tuple(proprio.shape)}"
            )
        embedded = self.proprio_encoder(proprio.to(tokens.dtype))
        return embedded.unsqueeze(-2).expand(*lead, self.cfg.patches, -1)

    def _tokens(self, z: Tensor, blocks: Tensor) -> Tensor:
        """Latents (B, T, P·S) and blocks (B, T, block_dim) → tokens (B, T, P, S + A)."""
        b, t, _ = z.shape
        patches = z.view(b, t, self.cfg.patches, self.cfg.slot_dim)
        actions = self.action_encoder(blocks)[:, :, None].expand(-1, -1, self.cfg.patches, -1)
        return torch.cat([patches, actions.to(patches.dtype)], dim=-1)

    def predict(self, z: Tensor, blocks: Tensor) -> Tensor:
        """Latents (B, T ≤ history, P·S) and their blocks → (B, T, P·S): the slots of each
        next frame (the action part of the output is dropped, as the reference overwrites
        it)."""
        if blocks.dim() != 3 or blocks.shape[-1] != self.cfg.block_dim:
            raise ValueError(
                f"action blocks must be (B, T, {self.cfg.block_dim}) (frameskip × action_dim), "
                f"got shape {tuple(blocks.shape)}"
            )
        out = self.predictor(self._tokens(z, blocks))[..., : self.cfg.slot_dim]
        return out.reshape(*z.shape)

    def rollout(self, z_ctx: Tensor, blocks: Tensor) -> Tensor:
        """Imagine H grids ahead from h real ones (BASELINES.md §2.4) → (B, H, P·S); block i
        pairs with latent i, as for LeWM, and a context of batch 1 is shared by all B."""
        if z_ctx.dim() != 3 or blocks.dim() != 3:
            raise ValueError(
                f"rollout takes z_ctx (B, h, D) and blocks (B, h-1+H, block_dim), got "
                f"{tuple(z_ctx.shape)} and {tuple(blocks.shape)}"
            )
        h, history = z_ctx.shape[1], self.cfg.history
        horizon = blocks.shape[1] - (h - 1)
        if not 1 <= h <= history or horizon < 1:
            raise ValueError(
                f"rollout takes 1 to {history} context latents and at least as many blocks, "
                f"got {h} and {blocks.shape[1]}"
            )
        z = z_ctx.expand(blocks.shape[0], -1, -1) if z_ctx.shape[0] == 1 else z_ctx
        imagined = []
        for step in range(horizon):
            window = z[:, -history:]
            n = window.shape[1]
            last = h + step  # latents so far; the window's blocks end at block last-1
            nxt = self.predict(window, blocks[:, last - n : last])[:, -1:]
            imagined.append(nxt)
            z = torch.cat([z, nxt], dim=1)
        return torch.cat(imagined, dim=1)

    def planning_cost(self, predicted: Tensor, z_goal: Tensor) -> Tensor:
        """The last imagined grid against the goal's (BASELINES.md §2.4): mean squared
        difference over patches and features, plus ``proprio_cost`` times that of the proprio
        embeddings."""
        cfg = self.cfg
        diff = (predicted[..., -1, :] - z_goal).unflatten(-1, (cfg.patches, cfg.slot_dim)) ** 2
        cost = diff[..., : cfg.enc_dim].mean(dim=(-2, -1))
        if cfg.uses_proprio:
            cost = cost + cfg.proprio_cost * diff[..., 0, cfg.enc_dim :].mean(dim=-1)
        return cost

    def loss(
        self,
        pixels: Tensor,
        blocks: Tensor,
        generator: torch.Generator | None = None,
        proprio: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Teacher-forced MSE of the slots (patch features and proprio embedding together, as
        the reference averages them), against detached targets; each part is also logged."""
        cfg = self.cfg
        if pixels.dim() != 5 or pixels.shape[1] != cfg.num_steps:
            raise ValueError(
                f"pixels must be (B, {cfg.num_steps}, 3, H, W) (num_steps = history + "
                f"num_preds), got shape {tuple(pixels.shape)}"
            )
        z = self.encode(pixels, proprio)
        pred = self.predict(z[:, : cfg.history], blocks[:, : cfg.history])
        target = z[:, cfg.num_preds : cfg.num_preds + cfg.history].detach()
        pred_loss = F.mse_loss(pred, target)
        out = {"loss": pred_loss, "pred_loss": pred_loss, "z": z.detach()}
        if cfg.uses_proprio:
            diff = (pred - target).unflatten(-1, (cfg.patches, cfg.slot_dim)) ** 2
            out["pixel_loss"] = diff[..., : cfg.enc_dim].mean()
            out["proprio_loss"] = diff[..., cfg.enc_dim :].mean()
        return out

    def param_counts(self) -> dict[str, int]:
        parts = ("encoder", "action_encoder", "proprio_encoder", "predictor")
        return count_parameters(self, parts if self.cfg.uses_proprio else parts[:2] + parts[3:])
