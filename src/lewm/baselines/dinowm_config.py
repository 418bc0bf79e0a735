"""The DINO-WM-style baseline's config (BASELINES.md §2): a frozen DINOv2 encoder whose patch
tokens are the latent, and a block-causal predictor over the patches of ``history`` frames.

The encoder sizes default to DINOv2 ViT-S/14 and must match ``encoder_weights`` when one is
given; without weights the encoder is random and frozen, which is allowed but labelled as such
wherever results are shown. ``image_size`` is the frames' size, as for every kind (the data
must hold it); the encoder sees them resized to ``encoder_size`` (224 in the paper, 256
patches; 56 gives 16 patches, which a laptop can train).
Proprioception (``proprio_dim`` values, which the data decides) is embedded to
``proprio_embed`` values and joined to every patch beside the action's embedding, as in the
paper's TwoRoom and PushT models; ``proprio_embed=0`` is the "noprop" variant.
"""

from __future__ import annotations

from dataclasses import dataclass

from lewm.config_checks import MAX_IMAGE_SIZE, at_least, check_memory, finite, require

# What every output says of a DINO-WM run whose encoder has no pretrained weights.
RANDOM_ENCODER_LABEL = "random frozen encoder, not DINOv2"


@dataclass
class DinoWMConfig:
    kind: str = "dinowm"
    image_size: int = 224
    encoder_size: int = 224
    patch_size: int = 14
    encoder_weights: str = ""
    enc_dim: int = 384
    enc_depth: int = 12
    enc_heads: int = 6
    enc_mlp: int = 1536
    enc_pretrain_size: int = 518
    action_embed: int = 10
    proprio_dim: int = 2
    proprio_embed: int = 10
    proprio_cost: float = 1.0
    pred_depth: int = 6
    pred_heads: int = 16
    pred_dim_head: int = 64
    pred_mlp: int = 2048
    pred_dropout: float = 0.1
    history: int = 3
    num_preds: int = 1
    action_dim: int = 2
    frameskip: int = 5

    @property
    def block_dim(self) -> int:
        return self.frameskip * self.action_dim

    @property
    def num_steps(self) -> int:
        return self.history + self.num_preds

    @property
    def patches(self) -> int:
        return (self.encoder_size // self.patch_size) ** 2

    @property
    def uses_proprio(self) -> bool:
        return self.proprio_embed > 0

    @property
    def slot_dim(self) -> int:
        """What the latent holds per patch: its features and the proprio embedding."""
        return self.enc_dim + self.proprio_embed

    @property
    def token_dim(self) -> int:
        """A predictor token: one patch's slot joined with the action embedding."""
        return self.slot_dim + self.action_embed

    @property
    def pretrained(self) -> bool:
        return bool(self.encoder_weights)

    @property
    def note(self) -> str:
        """Which encoder, and whether proprioception is read: two DINO-WM runs that differ
        there must not look alike in a table."""
        encoder = (
            f"DINOv2 weights from {self.encoder_weights}" if self.pretrained
            else RANDOM_ENCODER_LABEL
        )  # fmt: skip
        return encoder if self.uses_proprio else f"{encoder}; noprop"

    def encoder_parameters(self) -> int:
        """The frozen DINOv2's parameters (22,056,576 for ViT-S/14), in closed form."""
        d, m, p = self.enc_dim, self.enc_mlp, self.patch_size
        grid = (self.enc_pretrain_size // p) ** 2
        return (
            3 * p * p * d + d  # patch embedding
            + 2 * d + (1 + grid) * d  # CLS token, mask token, position embedding
            + self.enc_depth * (4 * d * d + 2 * d * m + 11 * d + m)  # blocks with LayerScale
            + 2 * d  # final LayerNorm
        )

    def trainable_parameters(self) -> int:
        """The predictor and the embedders: all that DINO-WM trains."""
        t, inner, pm = self.token_dim, self.pred_heads * self.pred_dim_head, self.pred_mlp
        predictor = (
            self.history * self.patches * t  # position embedding
            + self.pred_depth * (4 * t + 3 * t * inner + inner * t + t + 2 * t * pm + pm + t)
            + 2 * t  # final LayerNorm
        )
        embedders = (self.block_dim + 1) * self.action_embed
        if self.uses_proprio:
            embedders += (self.proprio_dim + 1) * self.proprio_embed
        return predictor + embedders

    def num_parameters(self) -> int:
        """Every parameter, so that a config is sized before any tensor exists."""
        return self.encoder_parameters() + self.trainable_parameters()

    def validate(self, section: str = "model") -> None:
        finite(section, self)
        at_least(
            section, self, 1, "image_size", "encoder_size", "patch_size", "enc_dim",
            "enc_depth", "enc_heads", "enc_mlp", "enc_pretrain_size", "action_embed",
            "pred_depth", "pred_heads", "pred_dim_head", "pred_mlp", "history", "num_preds",
            "action_dim", "frameskip", "proprio_dim",
        )  # fmt: skip
        at_least(section, self, 0, "proprio_embed")
        require(
            self.proprio_cost >= 0, f"{section}.proprio_cost", self.proprio_cost,
            "a number >= 0",
        )  # fmt: skip
        require(
            self.image_size <= MAX_IMAGE_SIZE, f"{section}.image_size", self.image_size,
            f"at most {MAX_IMAGE_SIZE} pixels",
        )  # fmt: skip
        require(
            self.encoder_size <= MAX_IMAGE_SIZE, f"{section}.encoder_size", self.encoder_size,
            f"at most {MAX_IMAGE_SIZE} pixels",
        )  # fmt: skip
        require(
            self.encoder_size % self.patch_size == 0, f"{section}.encoder_size",
            self.encoder_size, f"a multiple of {section}.patch_size={self.patch_size}",
        )  # fmt: skip
        require(
            self.enc_dim % self.enc_heads == 0, f"{section}.enc_heads", self.enc_heads,
            f"a divisor of {section}.enc_dim={self.enc_dim}",
        )  # fmt: skip
        require(
            0 <= self.pred_dropout < 1, f"{section}.pred_dropout", self.pred_dropout,
            "a number in [0, 1)",
        )  # fmt: skip
        check_memory(self, section)
