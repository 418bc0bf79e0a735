"""The action-conditioned causal predictor (MODEL.md §3).

A transformer over a short window of frame embeddings in which token t is modulated by the
embedding of the action block executed after frame t (AdaLN-zero, as in DiT, but per token),
and attends causally, so output t is a prediction of the embedding of frame t + 1.

Submodule names follow the released checkpoint (DATAFORMAT.md §5.1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lewm.model.vit import multihead_attention


class CausalAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.to_qkv(self.norm(x))
        dropout_p = self.dropout if self.training else 0.0
        return self.to_out(multihead_attention(qkv, self.heads, causal=True, dropout_p=dropout_p))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class ConditionalBlock(nn.Module):
    """A pre-norm transformer block whose norms are shifted, scaled and gated by the action.

    The modulation Linear starts at zero, so every gate is 0 and the block is the identity at
    initialisation: the predictor starts as "the next embedding equals this one" and learns
    to use actions from there.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = CausalAttention(dim, heads, dim_head, dropout)
        self.mlp = FeedForward(dim, mlp_dim, dropout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm(x), shift1, scale1))
        return x + gate2 * self.mlp(modulate(self.norm(x), shift2, scale2))


class Predictor(nn.Module):
    """(z, c), both (B, T, dim) with T ≤ history → (B, T, dim); output t predicts frame t + 1.

    Positions index the current window (0..T-1), not absolute time: during a rollout the window
    slides and its first token always takes position 0.
    """

    def __init__(
        self,
        dim: int,
        history: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.history = history
        self.pos_embedding = nn.Parameter(torch.randn(1, history, dim))
        self.transformer = nn.ModuleDict(
            dict(
                layers=nn.ModuleList(
                    ConditionalBlock(dim, heads, dim_head, mlp_dim, dropout) for _ in range(depth)
                ),
                norm=nn.LayerNorm(dim),
            )
        )

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        t = z.shape[1]
        if not 1 <= t <= self.history:
            raise ValueError(f"the predictor takes 1 to {self.history} frames (history), got {t}")
        if c.shape[:2] != z.shape[:2]:
            raise ValueError(
                f"embeddings {tuple(z.shape)} and action embeddings {tuple(c.shape)} "
                "must share batch and time"
            )
        x = z + self.pos_embedding[:, :t]
        for layer in self.transformer.layers:
            x = layer(x, c)
        return self.transformer.norm(x)
