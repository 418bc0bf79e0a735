"""The LeWM world model: encoder, projectors, action encoder, predictor and SIGReg (torch only)."""

from lewm.model.diagnostics import (
    active_dims,
    batch_statistics,
    effective_rank,
    embedding_std,
    recalibrate_batchnorm,
)
from lewm.model.heads import ActionEncoder, Projector
from lewm.model.lewm import LeWM
from lewm.model.predictor import Predictor
from lewm.model.sigreg import SIGReg
from lewm.model.vit import ViT

__all__ = [
    "ActionEncoder",
    "LeWM",
    "Predictor",
    "Projector",
    "SIGReg",
    "ViT",
    "active_dims",
    "batch_statistics",
    "effective_rank",
    "embedding_std",
    "recalibrate_batchnorm",
]
