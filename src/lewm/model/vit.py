"""The image encoder: a plain pre-norm Vision Transformer whose CLS token summarises a frame.

It reproduces the Hugging Face ``ViTModel`` that LeWM trains from scratch (MODEL.md §2) without
depending on ``transformers``: patch embedding, a learned CLS token and position embedding,
pre-norm blocks with exact GELU, and a final LayerNorm. LayerNorm eps 1e-12 and the
truncated-normal(0.02) init are kept because they are part of that model's definition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VIT_LN_EPS = 1e-12


def multihead_attention(qkv: Tensor, heads: int, causal: bool, dropout_p: float = 0.0) -> Tensor:
    """Attention over a fused (B, T, 3·inner) q/k/v projection; returns (B, T, inner).

    Shared by the encoder (bidirectional) and the predictor (causal), so both attend the same
    way and both go through ``scaled_dot_product_attention`` (its default scale 1/√d_head).

    On CPU, bf16 q/k/v are attended with two explicit batched matmuls (softmax in float32)
    instead: torch's CPU flash-attention kernel is slow in bf16 (its backward ran 3.6× slower
    than in float32 at the tiny preset's 65 tokens), and at LeWM's shapes the explicit form
    under bf16 autocast beat both it and a float32 round trip (65 tokens: 15 vs 42 and 22 ms
    per encoder layer, forward and backward; 257 tokens: 70 vs 110 ms).
    """
    b, t, _ = qkv.shape
    q, k, v = qkv.view(b, t, 3, heads, -1).permute(2, 0, 3, 1, 4)
    if qkv.device.type == "cpu" and qkv.dtype == torch.bfloat16:
        out = explicit_attention(q, k, v, causal, dropout_p)
    else:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    return out.transpose(1, 2).reshape(b, t, -1)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, dropout_p: float) -> Tensor:
    """softmax(q·kᵀ/√d)·v written out, no fused kernel: lewm's bf16 CPU path."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if causal:
        t = scores.shape[-1]
        future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    weights = F.dropout(scores.float().softmax(-1), dropout_p)
    return weights.to(v.dtype) @ v


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(multihead_attention(self.qkv(x), self.heads, causal=False))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.mlp = MLP(dim, mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Images (B, 3, S, S) → normalised tokens (B, 1 + (S/p)², dim); token 0 is the CLS token.

    The position embedding covers exactly ``image_size``: LeWM never changes resolution, so
    there is no interpolation path to get subtly wrong.
    """

    def __init__(
        self, image_size: int, patch_size: int, dim: int, depth: int, heads: int, mlp_dim: int
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch_size}")
        if dim % heads:
            raise ValueError(f"encoder width {dim} is not divisible by its {heads} heads")
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
