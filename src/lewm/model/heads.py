"""The small heads around the two transformers: the BatchNorm projector and the action encoder.

Submodule names (``net.0``, ``patch_embed``, ``embed.2``…) follow the released checkpoint
(DATAFORMAT.md §5.1) so that its weights load into these modules by name.
"""

from __future__ import annotations

from torch import Tensor, nn

from lewm.model.config import ACTION_SMOOTHED_DIM


class Projector(nn.Module):
    """Linear → BatchNorm1d → GELU → Linear, applied to every vector of a (..., in_dim) tensor.

    The encoder ends in a LayerNorm, which pins every embedding's scale and so fights SIGReg's
    pull toward an isotropic Gaussian; the BatchNorm here frees the scale again (the paper calls
    the projector necessary). All leading dims are flattened into one BatchNorm batch, so the
    statistics span batch *and* time. Used twice: after the encoder and after the predictor.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.GELU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


class ActionEncoder(nn.Module):
    """Action blocks (B, T, block_dim) → conditioning embeddings (B, T, dim).

    The kernel-1 Conv1d over time is a per-step linear squeeze of the f·A raw values of a
    block; keeping it a Conv1d keeps the released weights' shapes.
    """

    def __init__(self, block_dim: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.patch_embed = nn.Conv1d(block_dim, ACTION_SMOOTHED_DIM, kernel_size=1)
        self.embed = nn.Sequential(
            nn.Linear(ACTION_SMOOTHED_DIM, hidden),
            nn.SiLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, blocks: Tensor) -> Tensor:
        x = self.patch_embed(blocks.transpose(1, 2)).transpose(1, 2)
        return self.embed(x)
