"""PLDM's config: LeWM's network with VICReg-style terms in place of SIGReg (BASELINES.md §1).

The coefficients are the ones the paper's PLDM baseline used, one set for every environment.
SIGReg's fields are inherited with weight 0, as in the platform's config: PLDM never needs it,
but a non-zero ``sigreg_lambda`` adds it, which makes the hybrid one override away.
"""

from __future__ import annotations

from dataclasses import dataclass

from lewm.config_checks import at_least, require
from lewm.model.config import ModelConfig

# The variance terms' hinge target and the epsilon under their square root (VICReg's).
STD_MARGIN = 1.0
STD_EPS = 1e-4


@dataclass
class PLDMConfig(ModelConfig):
    """L = pred + std·L_std + std_t·L_std_t + cov·L_cov + cov_t·L_cov_t + temporal·L_temp
    + idm·L_idm; the inverse-dynamics head (``idm_hidden`` wide) always trains on detached
    embeddings, so its error is a diagnostic even where its coefficient is 0."""

    kind: str = "pldm"
    sigreg_lambda: float = 0.0
    std_coeff: float = 18.0
    std_t_coeff: float = 0.7
    cov_coeff: float = 12.0
    cov_t_coeff: float = 0.0
    temporal_coeff: float = 0.2
    idm_coeff: float = 0.0
    idm_hidden: int = 512

    @property
    def note(self) -> str:
        return "with SIGReg" if self.sigreg_lambda > 0 else ""

    def num_parameters(self) -> int:
        """LeWM's network plus the IDM head: Linear(2D→hidden), LayerNorm, Linear(→block)."""
        e, h = self.embed_dim, self.idm_hidden
        idm = 2 * e * h + h + 2 * h + h * self.block_dim + self.block_dim
        return super().num_parameters() + idm

    def validate(self, section: str = "model") -> None:
        super().validate(section)
        at_least(section, self, 1, "idm_hidden")
        for name in (
            "std_coeff", "std_t_coeff", "cov_coeff", "cov_t_coeff", "temporal_coeff", "idm_coeff"
        ):
            value = getattr(self, name)
            require(value >= 0, f"{section}.{name}", value, "a number >= 0")
        require(
            self.num_steps >= 2, f"{section}.num_preds", self.num_preds,
            "history + num_preds >= 2 (the temporal terms need two frames)",
        )  # fmt: skip
