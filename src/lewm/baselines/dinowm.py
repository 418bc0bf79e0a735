"""A DINO-WM-style world model (BASELINES.md §2, the paper's "PreJEPA" baseline).

A frozen DINOv2 turns each frame into patch tokens; that grid of tokens is the latent. The
action block's embedding is joined to every patch of its frame, and a transformer over the
patches of ``history`` frames, attending block-causally (a frame's tokens see their own and
earlier frames), predicts each patch of the next frame. Only the predictor and the action
embedder train, on the mean squared error of the patch features. Planning compares the
last imagined grid with the goal's, patch by patch.

The latent is handed out flattened to (..., patches·dim) so that planners and analyses read
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

    def encode(self, pixels: Tensor) -> Tensor:
        """Frames (..., 3, H, W), uint8 or float in [0, 1] → flattened patch features
        (..., patches·enc_dim), without gradient (the encoder is frozen)."""
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
            tokens = self.encoder(x.to(self.encoder.cls_token.dtype))
        return tokens.reshape(*pixels.shape[:-3], -1).detach()

    def _tokens(self, z: Tensor, blocks: Tensor) -> Tensor:
        """Latents (B, T, P·E) and blocks (B, T, block_dim) → tokens (B, T, P, E + A)."""
        b, t, _ = z.shape
        patches = z.view(b, t, self.cfg.patches, self.cfg.enc_dim)
        actions = self.action_encoder(blocks)[:, :, None].expand(-1, -1, self.cfg.patches, -1)
        return torch.cat([patches, actions.to(patches.dtype)], dim=-1)

    def predict(self, z: Tensor, blocks: Tensor) -> Tensor:
        """Latents (B, T ≤ history, P·E) and their blocks → (B, T, P·E): the patch features
        of each next frame (the action slot of the output is dropped, as the reference
        overwrites it)."""
        if blocks.dim() != 3 or blocks.shape[-1] != self.cfg.block_dim:
            raise ValueError(
                f"action blocks must be (B, T, {self.cfg.block_dim}) (frameskip × action_dim), "
                f"got shape {tuple(blocks.shape)}"
            )
        out = self.predictor(self._tokens(z, blocks))[..., : self.cfg.enc_dim]
        return out.reshape(*z.shape)

    def rollout(self, z_ctx: Tensor, blocks: Tensor) -> Tensor:
        """Imagine H grids ahead from h real ones (BASELINES.md §2.4) → (B, H, P·E); block i
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
        """Mean over patches and features of the squared difference between the last
        imagined grid and the goal's (the reference's pixel term; no proprio term)."""
        return ((predicted[..., -1, :] - z_goal) ** 2).mean(dim=-1)

    def loss(
        self, pixels: Tensor, blocks: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Teacher-forced patch-feature MSE; the targets come from the frozen encoder."""
        cfg = self.cfg
        if pixels.dim() != 5 or pixels.shape[1] != cfg.num_steps:
            raise ValueError(
                f"pixels must be (B, {cfg.num_steps}, 3, H, W) (num_steps = history + "
                f"num_preds), got shape {tuple(pixels.shape)}"
            )
        z = self.encode(pixels)
        pred = self.predict(z[:, : cfg.history], blocks[:, : cfg.history])
        pred_loss = F.mse_loss(pred, z[:, cfg.num_preds : cfg.num_preds + cfg.history])
        return {"loss": pred_loss, "pred_loss": pred_loss, "z": z}

    def param_counts(self) -> dict[str, int]:
        return count_parameters(self, ("encoder", "action_encoder", "predictor"))
