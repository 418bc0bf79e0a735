"""The action-conditioned causal predictor (MODEL.md §3).

A transformer over a short window of frame embeddings in which token t is modulated by the
embedding of the action block executed after frame t (AdaLN-zero, as in DiT, but per token),
and attends causally, so output t is a prediction of the embedding of frame t + 1.

Submodule names follow the released checkpoint (DATAFORMAT.md §5.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lewm.model.vit import multihead_attention

# A window's cached keys and values at one layer: one (B, heads, dim_head) per position.
KV = tuple[list[Tensor], list[Tensor]]


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


def _attend_last(q: Tensor, keys: list[Tensor], values: list[Tensor]) -> Tensor:
    """Attention of one query per sequence over a handful of cached positions.

    With at most ``history`` keys, elementwise products beat a fused kernel launched on
    B × heads tiny problems, and keeping one tensor per position avoids re-copying the
    cache every step. q (B, heads, dim_head) → (B, heads · dim_head).
    """
    scores = torch.stack([(q * k).sum(-1) for k in keys], dim=-1) * q.shape[-1] ** -0.5
    weights = scores.softmax(dim=-1)
    out = sum(weights[..., j, None] * v for j, v in enumerate(values))
    return out.reshape(q.shape[0], -1)


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

    def extend(self, x: Tensor, modulation: Tensor, cache: KV, final: bool) -> Tensor:
        """New tokens at the end of one window: x (n, B, dim), token-major, after the
        ``len(cache[0])`` tokens whose keys and values ``cache`` holds; theirs are appended.

        Token j sees the cached keys and the new ones up to its own (causal). Queries are
        computed only where they are used: a token alone in its window attends to itself
        with weight exactly 1, so its attention output is its own value. In the ``final``
        layer only the last token goes on through the attention output and the MLP: the
        others are needed for their keys and values only.
        """
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, dim=-1)
        n, batch, _ = x.shape
        heads = self.attn.heads
        h = self.attn.norm(modulate(self.norm(x), shift1, scale1))
        weight = self.attn.to_qkv.weight  # rows: queries, then keys, then values
        inner = weight.shape[0] // 3
        k, v = F.linear(h, weight[inner:]).view(n, batch, 2, heads, -1).unbind(2)
        keys, values = cache
        before = len(keys)
        keys.extend(k.unbind(0))
        values.extend(v.unbind(0))
        first = n - 1 if final else 0
        asking = max(first, 1 - before)  # the first new token with an earlier one to see
        rows = []
        if first < asking:
            rows.append(v[first].reshape(batch, -1))
        if asking < n:
            q = F.linear(h[asking:], weight[:inner]).view(n - asking, batch, heads, -1)
            rows.extend(
                _attend_last(q[j - asking], keys[: before + j + 1], values[: before + j + 1])
                for j in range(asking, n)
            )
        x = x[first:] + gate1[first:] * self.attn.to_out(torch.stack(rows))
        return x + gate2[first:] * self.mlp(modulate(self.norm(x), shift2[first:], scale2[first:]))


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

    def rollout(
        self, z: Tensor, c: Tensor, horizon: int, readout: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """Autoregressive rollout, exactly as re-running ``forward`` on each sliding window,
        with each window's keys and values computed once.

        Re-indexed positions forbid a plain KV cache: when the window slides, every token
        moves to a new position and its keys and values change. But a token's states depend
        only on its own window's earlier tokens (causality). So the first window, which does
        not slide until it is full, grows one token per step over a cache; every later window
        is new when it is read out, and all its tokens exist by then, so it runs once as a
        whole, token-major (T, B, dim), with queries only where a token has an earlier one to
        see and its last layer only for the token read out. Windows are taken one at a time,
        so each one's keys and values are used while they are still in cache. The action
        modulation depends only on the token's own block, so it is computed once per token,
        not once per window.

        z (B, h, dim) real context, c (B, h-1+horizon, dim) action embeddings (token i pairs
        with c[:, i]); ``readout`` maps a final-norm output to the next token (pred_proj).
        Returns the ``horizon`` predicted tokens (B, horizon, dim). Eval mode only (no dropout).
        """
        if self.training:
            raise RuntimeError("Predictor.rollout runs in eval mode (dropout off)")
        h, layers = z.shape[1], self.transformer.layers
        modulations = [layer.adaLN_modulation(c.transpose(0, 1)) for layer in layers]
        tokens = list(z.unbind(1))
        start, caches = -1, []
        while len(tokens) < h + horizon:
            end = len(tokens)  # the window ending at the newest token predicts token ``end``
            if max(0, end - self.history) != start:  # it slid: a new window, a fresh cache
                start, caches = max(0, end - self.history), [([], []) for _ in layers]
            done = start + len(caches[0][0])  # tokens before ``done`` are in the cache
            pos = self.pos_embedding[0, done - start : end - start, None]
            x = torch.stack(tokens[done:end]) + pos
            for i, layer in enumerate(layers):
                x = layer.extend(x, modulations[i][done:end], caches[i], i == len(layers) - 1)
            tokens.append(readout(self.transformer.norm(x[-1])))
        return torch.stack(tokens[h:], dim=1)
