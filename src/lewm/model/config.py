"""LeWM's architecture and loss weights as a typed config (MODEL.md §2–5).

It lives beside the model it sizes; ``lewm.config`` composes it with the data, training and
planning sections. ``kind`` names the world model in the registry (``lewm.registry``): run
folders written before there were other kinds have no ``kind`` and load as LeWM.
"""

from __future__ import annotations

from dataclasses import dataclass

from lewm.config_checks import (
    MAX_IMAGE_SIZE,
    at_least,
    check_memory,
    finite,
    require,
)

# Width the action encoder first squeezes a block into (the released model's "smoothed" dim);
# here rather than in model/heads.py so that a config can count its parameters.
ACTION_SMOOTHED_DIM = 10
# SIGReg's (time, batch, projections, knots) tensor grows with both; these are far above
# the paper's 1024 x 17 and still keep one step's sketch within memory.
MAX_SIGREG_PROJECTIONS = 65536
MAX_SIGREG_KNOTS = 1024


@dataclass
class ModelConfig:
    """The LeWM architecture (MODEL.md §2–5). Defaults are the released ``paper`` model.

    ``sigreg_lambda=0`` is the paper's no-SIGReg ablation: it trains, and collapses.
    """

    kind: str = "lewm"
    image_size: int = 224
    patch_size: int = 14
    enc_dim: int = 192
    enc_depth: int = 12
    enc_heads: int = 3
    enc_mlp: int = 768
    embed_dim: int = 192
    proj_hidden: int = 2048
    pred_depth: int = 6
    pred_heads: int = 16
    pred_dim_head: int = 64
    pred_mlp: int = 2048
    pred_dropout: float = 0.1
    history: int = 3
    num_preds: int = 1
    action_dim: int = 2
    frameskip: int = 5
    action_hidden: int = 768
    sigreg_lambda: float = 0.09
    sigreg_projections: int = 1024
    sigreg_knots: int = 17

    @property
    def note(self) -> str:
        """What tables and summaries print beside the kind, so an ablation is never mistaken
        for the method."""
        return "no SIGReg (sigreg_lambda=0 ablation)" if self.sigreg_lambda == 0 else ""

    @property
    def uses_proprio(self) -> bool:
        """LeWM learns from pixels and actions alone (so does PLDM, which is built on it)."""
        return False

    @property
    def block_dim(self) -> int:
        """Width of one action block: ``frameskip`` raw actions concatenated."""
        return self.frameskip * self.action_dim

    @property
    def num_steps(self) -> int:
        """Frames per training clip: the predictor's context plus the frames it predicts."""
        return self.history + self.num_preds

    def num_parameters(self) -> int:
        """The model's parameter count in closed form, so a config is sized before any tensor
        exists (a width of 1e8 would otherwise allocate tens of GB before a shape is checked).
        The tests pin it to ``LeWM(cfg).param_counts()``."""

        def projector(in_dim: int, hidden: int, out_dim: int) -> int:
            return in_dim * hidden + hidden + 2 * hidden + hidden * out_dim + out_dim

        d, m, e = self.enc_dim, self.enc_mlp, self.embed_dim
        tokens = 1 + (self.image_size // self.patch_size) ** 2
        encoder = (
            (3 * self.patch_size**2 * d + d)  # patch embedding
            + (d + tokens * d)  # CLS token and position embedding
            + self.enc_depth * (4 * d * d + 2 * d * m + 9 * d + m)  # blocks
            + 2 * d  # final LayerNorm
        )
        inner, pm = self.pred_heads * self.pred_dim_head, self.pred_mlp
        predictor = (
            self.history * e  # position embedding
            + self.pred_depth * (6 * e * e + 4 * e * inner + 2 * e * pm + pm + 12 * e)
            + 2 * e  # final LayerNorm
        )
        h, s = self.action_hidden, ACTION_SMOOTHED_DIM
        action_encoder = self.block_dim * s + s + s * h + h + h * e + e
        return (
            encoder
            + projector(d, self.proj_hidden, e)
            + action_encoder
            + predictor
            + projector(e, self.proj_hidden, e)
        )

    def validate(self, section: str = "model") -> None:
        """Refuse sizes the model cannot be built with, or not on this machine, before any
        tensor is allocated; ``section`` prefixes the field names in the message."""
        finite(section, self)
        at_least(
            section, self, 1, "image_size", "patch_size", "enc_dim", "enc_depth", "enc_heads",
            "enc_mlp", "embed_dim", "proj_hidden", "pred_depth", "pred_heads", "pred_dim_head",
            "pred_mlp", "history", "num_preds", "action_dim", "frameskip", "action_hidden",
            "sigreg_projections",
        )  # fmt: skip
        require(
            self.image_size <= MAX_IMAGE_SIZE, f"{section}.image_size", self.image_size,
            f"at most {MAX_IMAGE_SIZE} pixels",
        )  # fmt: skip
        require(
            self.image_size % self.patch_size == 0, f"{section}.patch_size", self.patch_size,
            f"a divisor of {section}.image_size={self.image_size}",
        )  # fmt: skip
        require(
            self.enc_dim % self.enc_heads == 0, f"{section}.enc_heads", self.enc_heads,
            f"a divisor of {section}.enc_dim={self.enc_dim}",
        )  # fmt: skip
        require(
            0 <= self.pred_dropout < 1, f"{section}.pred_dropout", self.pred_dropout,
            "a number in [0, 1)",
        )  # fmt: skip
        require(
            self.sigreg_lambda >= 0, f"{section}.sigreg_lambda", self.sigreg_lambda,
            "a number >= 0",
        )  # fmt: skip
        require(
            self.sigreg_projections <= MAX_SIGREG_PROJECTIONS, f"{section}.sigreg_projections",
            self.sigreg_projections, f"at most {MAX_SIGREG_PROJECTIONS}",
        )  # fmt: skip
        require(
            2 <= self.sigreg_knots <= MAX_SIGREG_KNOTS, f"{section}.sigreg_knots",
            self.sigreg_knots, f"an integer in [2, {MAX_SIGREG_KNOTS}]",
        )  # fmt: skip
        check_memory(self, section)
