"""SIGReg against the values its formula implies (MODEL.md §5)."""

from __future__ import annotations

import pytest
import torch

from lewm.config import ModelConfig
from lewm.model import LeWM, SIGReg

GAUSSIAN_VALUE = 1.05  # N·∫(1 − e^{-τ²}) e^{-τ²/2} dτ over [−3, 3], for any N


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n, t", [(64, 128), (256, 32), (1024, 8)])
def test_isotropic_gaussian_scores_about_1_05_at_any_batch_size(n: int, t: int) -> None:
    z = torch.randn(t, n, 16, generator=gen(n))
    value = SIGReg(num_projections=256)(z, gen(1)).item()
    assert value == pytest.approx(GAUSSIAN_VALUE, abs=0.1)


def test_collapsed_batch_scores_about_0_40_n() -> None:
    value = SIGReg()(torch.zeros(128, 32), gen()).item()
    assert value == pytest.approx(51.5, abs=0.5)


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda z: z + 2.0, id="shifted"),
        pytest.param(lambda z: z * 3.0, id="scaled"),
        pytest.param(lambda z: z[:, :2] @ torch.randn(2, 32, generator=gen(5)), id="low-rank"),
    ],
)
def test_non_gaussian_batches_score_clearly_higher(transform) -> None:
    z = torch.randn(256, 32, generator=gen(3))
    sigreg = SIGReg(num_projections=256)
    assert sigreg(transform(z), gen(4)).item() > 5 * sigreg(z, gen(4)).item()


def test_same_generator_seed_same_value_and_fresh_directions_otherwise() -> None:
    z = torch.randn(64, 16, generator=gen())
    sigreg = SIGReg(num_projections=32)
    assert sigreg(z, gen(7)).item() == sigreg(z, gen(7)).item()
    assert sigreg(z, gen(7)).item() != sigreg(z, gen(8)).item()


def test_float32_under_bf16_autocast() -> None:
    z = torch.randn(2, 64, 16, generator=gen())
    sigreg = SIGReg(num_projections=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = sigreg(z.bfloat16(), gen(1))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(sigreg(z.bfloat16().float(), gen(1)).item(), rel=1e-5)


def test_time_steps_are_averaged_with_shared_directions() -> None:
    z = torch.randn(3, 64, 16, generator=gen())
    sigreg = SIGReg(num_projections=64)
    per_step = torch.stack([sigreg(z[t], gen(2)) for t in range(3)])
    assert sigreg(z, gen(2)).item() == pytest.approx(per_step.mean().item(), rel=1e-5)
    assert per_step.std().item() > 0.01  # the steps really differ, so the check means something


def small_model_and_batch() -> tuple[LeWM, torch.Tensor, torch.Tensor]:
    cfg = ModelConfig(
        image_size=16, patch_size=8, enc_dim=32, enc_depth=1, enc_heads=2, enc_mlp=64,
        embed_dim=32, proj_hidden=64, pred_depth=1, pred_heads=2, pred_dim_head=16, pred_mlp=64,
        history=1, action_hidden=32, sigreg_projections=64,
    )  # fmt: skip
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (8, cfg.num_steps, 3, 16, 16), dtype=torch.uint8)
    return LeWM(cfg), pixels, torch.randn(8, cfg.num_steps, cfg.block_dim)


def test_gradient_reaches_the_encoder_through_the_loss() -> None:
    model, pixels, blocks = small_model_and_batch()
    model.loss(pixels, blocks, gen())["sigreg"].backward()
    grad = model.encoder.patch_embed.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_loss_terms_are_float32_under_bf16_autocast() -> None:
    """bf16 runs the encoder and predictor; the losses they feed are taken in float32."""
    model, pixels, blocks = small_model_and_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.loss(pixels, blocks, gen())
    assert out["z"].dtype == torch.bfloat16  # autocast really was on
    for name in ("loss", "pred_loss", "sigreg"):
        assert out[name].dtype == torch.float32, name
