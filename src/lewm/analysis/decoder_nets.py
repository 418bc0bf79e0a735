"""The pixel decoders' architectures: embeddings z (..., D) → frames (..., 3, S, S).

Two ways to paint a frame from one vector. ``cross`` is the paper's (BASELINES.md §6): one
learned query per patch cross-attends to the embedding. With a single key every query gets
the same message, so where each patch lies is known only to its query, and small objects
come slowly: on the TwoRoom demo run, 2,000 steps of 64 frames left the agent undrawn (held-
out 28.3 dB, the mean frame 27.1). ``conv`` (the default) spreads the embedding over a
coarse grid and upsamples it with convolutions, so position is built into the layers: the
same 2,000 steps drew the agent where it is, at 30.8 dB (README, the decoder table).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class _Decoder(nn.Module):
    """What both architectures share: their sizes as a record, and the input check."""

    embed_dim: int
    HPARAMS: tuple[str, ...] = ()

    def hparams(self) -> dict[str, int]:
        """The constructor's arguments: enough to rebuild this decoder from its weights."""
        return {name: int(getattr(self, name)) for name in self.HPARAMS}

    def _flat(self, z: Tensor) -> Tensor:
        """``z`` (..., embed_dim) as (N, embed_dim), or a clear error."""
        if z.shape[-1] != self.embed_dim:
            raise ValueError(
                f"decoder takes embeddings (..., {self.embed_dim}), got {tuple(z.shape)}"
            )
        return z.reshape(-1, self.embed_dim)


def default_patch(image_size: int) -> int:
    """16-px patches as in the paper at 224 px; 8 px below 128 px, where a 16-px patch would
    leave a 64-px frame only 16 queries to paint a ~4-px agent with."""
    return 16 if image_size >= 128 else 8


class _CrossAttentionLayer(nn.Module):
    """Post-norm: queries attend to the latent token, then pass through an MLP."""

    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.attn_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))
        self.mlp_norm = nn.LayerNorm(width)

    def forward(self, queries: Tensor, latent: Tensor) -> Tensor:
        attended = self.attn(queries, latent, latent, need_weights=False)[0]
        queries = self.attn_norm(queries + attended)
        return self.mlp_norm(queries + self.mlp(queries))


class CrossAttentionDecoder(_Decoder):
    """BASELINES.md §6: embeddings (..., embed_dim) → frames (..., 3, S, S) in [0, 1] units.

    The output is not squashed (as in the reference), so training is a plain regression;
    :func:`to_images` clamps when pixels are wanted. With a single key the attention weights
    are all 1, so every patch receives the same message; where each patch lies is known
    only to its query.
    """

    ARCH = "cross"
    HPARAMS = ("embed_dim", "image_size", "patch_size", "width", "depth", "heads", "mlp")

    def __init__(
        self,
        embed_dim: int,
        image_size: int,
        patch_size: int | None = None,
        width: int = 256,
        depth: int = 3,
        heads: int = 8,
        mlp: int = 1024,
    ) -> None:
        super().__init__()
        patch_size = patch_size or default_patch(image_size)
        if min(embed_dim, image_size, patch_size, width, depth, heads, mlp) < 1:
            raise ValueError("decoder sizes must all be >= 1")
        if image_size % patch_size:
            raise ValueError(
                f"decoder patch_size={patch_size} does not divide image_size={image_size}"
            )
        if width % heads:
            raise ValueError(f"decoder width={width} is not a multiple of heads={heads}")
        self.embed_dim, self.image_size, self.patch_size = embed_dim, image_size, patch_size
        self.width, self.depth, self.heads, self.mlp = width, depth, heads, mlp
        self.grid = image_size // patch_size
        self.latent = nn.Sequential(nn.Linear(embed_dim, width), nn.LayerNorm(width), nn.GELU())
        self.queries = nn.Parameter(torch.randn(1, self.grid**2, width) * 0.02)
        self.layers = nn.ModuleList(_CrossAttentionLayer(width, heads, mlp) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, patch_size**2 * 3))

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        latent = self.latent(self._flat(z)[:, None])
        q = self.queries.expand(latent.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, latent)
        return unpatchify(self.head(q), self.patch_size).reshape(
            *lead, 3, self.image_size, self.image_size
        )


def unpatchify(patches: Tensor, patch_size: int) -> Tensor:
    """(B, grid², p·p·3) → (B, 3, grid·p, grid·p): patch k fills grid cell (k // grid,
    k % grid), its values read row-major with the colour innermost, as in the reference."""
    g = math.isqrt(patches.shape[1])
    image = patches.reshape(-1, g, g, patch_size, patch_size, 3).permute(0, 5, 1, 3, 2, 4)
    return image.reshape(-1, 3, g * patch_size, g * patch_size)


class ConvDecoder(_Decoder):
    """A linear map of z onto a coarse grid, then nearest-neighbour ×2 upsampling, each
    followed by a 3×3 convolution, GroupNorm and GELU, and a last 3×3 convolution to RGB.

    The grid is the frame halved while it stays even and ≥ 8 px (at most 5 times: 8×8 for
    64 px, 14×14 for 224 px); channels start at ``width`` and halve with each upsampling,
    no fewer than 8. Unsquashed output, as the cross-attention decoder's.
    """

    ARCH = "conv"
    HPARAMS = ("embed_dim", "image_size", "width")

    def __init__(self, embed_dim: int, image_size: int, width: int = 128) -> None:
        super().__init__()
        if min(embed_dim, image_size) < 1 or width < 8 or width % 8:
            raise ValueError(f"conv decoder: embed_dim={embed_dim} and image_size={image_size} "
                             f"must be >= 1, width={width} a multiple of 8")
        self.embed_dim, self.image_size, self.width = embed_dim, image_size, width
        self.grid, stages = image_size, 0
        while stages < 5 and self.grid % 2 == 0 and self.grid // 2 >= 8:
            self.grid, stages = self.grid // 2, stages + 1
        channels = [max(8, (width >> i) // 8 * 8) for i in range(stages + 1)]
        self.latent = nn.Linear(embed_dim, width * self.grid**2)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.GELU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(channels[-1], 3, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        grid = self.latent(self._flat(z))
        image = self.body(grid.reshape(-1, self.width, self.grid, self.grid))
        return image.reshape(*lead, 3, self.image_size, self.image_size)


PixelDecoder = CrossAttentionDecoder | ConvDecoder
ARCHITECTURES: dict[str, type[_Decoder]] = {
    CrossAttentionDecoder.ARCH: CrossAttentionDecoder, ConvDecoder.ARCH: ConvDecoder,
}


def check_arch(arch: str, patch_size: int | None) -> None:
    """Refuse an unknown ``arch``, or a patch size given to the conv decoder, which has none."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"decoder arch {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    if patch_size and arch == ConvDecoder.ARCH:
        raise ValueError("--patch-size applies to the cross-attention decoder only (--arch cross)")


def build_decoder(
    arch: str, embed_dim: int, image_size: int, patch_size: int | None = None
) -> PixelDecoder:
    """A fresh decoder of ``arch`` (conv|cross) at its default sizes; ``patch_size`` is the
    cross-attention decoder's only (None: :func:`default_patch`)."""
    check_arch(arch, patch_size)
    if arch == ConvDecoder.ARCH:
        return ConvDecoder(embed_dim, image_size)
    return CrossAttentionDecoder(embed_dim, image_size, patch_size)
