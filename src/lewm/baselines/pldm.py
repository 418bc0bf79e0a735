"""PLDM as the paper's baseline table ran it (BASELINES.md §1): LeWM's network, module for
module, trained with six VICReg-style coefficients instead of SIGReg's one.

    L = pred + 18·std + 0.7·std_t + 12·cov + 0·cov_t + 0.2·temporal + 0·idm

Each term is returned (and logged) on its own, so a run shows which of them moves; that the
sum of many pulls is noisier than LeWM's two terms is one of the paper's claims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lewm.baselines.pldm_config import STD_EPS, STD_MARGIN, PLDMConfig
from lewm.model.lewm import LeWM
from lewm.model.protocol import count_parameters


def variance_hinge(z: Tensor, dim: int) -> Tensor:
    """mean ReLU(1 − √(Var + ε)) with the unbiased variance along ``dim``: pushes every
    feature's spread along that axis up to 1, and leaves it alone beyond."""
    std = torch.sqrt(z.var(dim=dim, unbiased=True) + STD_EPS)
    return F.relu(STD_MARGIN - std).mean()


def off_diagonal_energy(x: Tensor) -> Tensor:
    """Mean over the leading dims of Σ_{i≠j} C[i,j]² / (D² − D), with C = xᵀx / (n − 1) for
    already-centred x of shape (..., n, D): decorrelates features."""
    n, d = x.shape[-2], x.shape[-1]
    cov = x.transpose(-1, -2) @ x / (n - 1)
    off = cov.pow(2).sum(dim=(-1, -2)) - cov.diagonal(dim1=-2, dim2=-1).pow(2).sum(-1)
    return (off / (d * d - d)).mean()


def pldm_terms(z: Tensor) -> dict[str, Tensor]:
    """The regularisers of BASELINES.md §1.2 on embeddings z of shape (B, T, D)."""
    centred = z - z.mean(dim=0, keepdim=True)  # over the batch, per (t, d)
    return {
        "std": variance_hinge(z, dim=0),
        "std_t": variance_hinge(z, dim=1),
        "cov": off_diagonal_energy(centred.transpose(0, 1)),  # per frame, across the batch
        "cov_t": off_diagonal_energy(centred),  # per sample, across its frames
        "temporal": (z[:, 1:] - z[:, :-1]).pow(2).mean(),
    }


class InverseDynamics(nn.Module):
    """[z_t+1; z_t] → the action block between them."""

    def __init__(self, embed_dim: int, hidden: int, block_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * embed_dim, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, block_dim),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(torch.cat([z[:, 1:], z[:, :-1]], dim=-1))


class PLDM(LeWM):
    """LeWM's encoder, projectors, action encoder and predictor with PLDM's objective; it
    plans exactly as LeWM does (last-step squared distance to the goal embedding)."""

    def __init__(self, cfg: PLDMConfig) -> None:
        super().__init__(cfg)
        self.idm = InverseDynamics(cfg.embed_dim, cfg.idm_hidden, cfg.block_dim)

    def loss(
        self,
        pixels: Tensor,
        blocks: Tensor,
        generator: torch.Generator | None = None,
        proprio: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Every term of BASELINES.md §1.2 with its weight; proprioception is not read."""
        cfg = self.cfg
        z, pred, target = self.teacher_forced(pixels, blocks)
        out = {"pred_loss": F.mse_loss(pred, target), **pldm_terms(z)}
        out["idm"] = F.mse_loss(self.idm(z), blocks[:, : z.shape[1] - 1])
        weights = {
            "pred_loss": 1.0, "std": cfg.std_coeff, "std_t": cfg.std_t_coeff,
            "cov": cfg.cov_coeff, "cov_t": cfg.cov_t_coeff, "temporal": cfg.temporal_coeff,
            "idm": cfg.idm_coeff,
        }  # fmt: skip
        # SIGReg is logged for every kind (it measures how Gaussian the embeddings are) but
        # only trains PLDM when given a weight, as in the platform's config where it is 0.
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.sigreg_lambda > 0):
            out["sigreg"] = self.sigreg(z.transpose(0, 1), generator)
        weights["sigreg"] = cfg.sigreg_lambda
        out["loss"] = sum(weights[name] * out[name] for name in weights)
        out["z"] = z.detach()
        return out

    def param_counts(self) -> dict[str, int]:
        return count_parameters(
            self, ("encoder", "projector", "action_encoder", "predictor", "pred_proj", "idm")
        )
