"""The LeWM model: exact sizes, causality, AdaLN-zero, encode contract, rollout window, loss, BN."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lewm.config import ModelConfig, preset
from lewm.model import LeWM, effective_rank, embedding_std, recalibrate_batchnorm
from lewm.model.vit import multihead_attention

SMALL = ModelConfig(
    image_size=16, patch_size=8, enc_dim=48, enc_depth=1, enc_heads=2, enc_mlp=64,
    embed_dim=32, proj_hidden=64, pred_depth=2, pred_heads=2, pred_dim_head=16, pred_mlp=64,
    history=3, action_hidden=32, sigreg_projections=64,
)  # fmt: skip


def small_model(seed: int = 0, **overrides) -> LeWM:
    torch.manual_seed(seed)
    return LeWM(dataclasses.replace(SMALL, **overrides))


def wake_adaln(model: LeWM) -> LeWM:
    """Give the zero-initialised modulation random weights, as training would, so that the
    predictor actually attends and uses actions (at init every block is the identity)."""
    for name, param in model.predictor.named_parameters():
        if "adaLN_modulation" in name:
            nn.init.normal_(param, std=0.3)
    return model


def pixels_for(cfg: ModelConfig, *lead: int) -> torch.Tensor:
    return torch.randint(0, 256, (*lead, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)


def test_paper_preset_has_the_released_parameter_counts() -> None:
    assert LeWM(preset("paper").model).param_counts() == {
        "encoder": 5_501_376,
        "projector": 792_768,
        "action_encoder": 156_206,
        "predictor": 10_791_360,
        "pred_proj": 792_768,
        "total": 18_034_478,
        "trainable": 18_034_478,
    }


def test_predictor_is_causal() -> None:
    model = wake_adaln(small_model()).eval()
    z, blocks = torch.randn(2, 3, 32), torch.randn(2, 3, SMALL.block_dim)
    z2, blocks2 = z.clone(), blocks.clone()
    z2[:, 2], blocks2[:, 2] = torch.randn(2, 32), torch.randn(2, SMALL.block_dim)
    out, out2 = model.predict(z, blocks), model.predict(z2, blocks2)
    torch.testing.assert_close(out[:, :2], out2[:, :2])
    assert not torch.allclose(out[:, 2], out2[:, 2])


def test_adaln_zero_makes_the_initial_predictor_ignore_actions() -> None:
    model = small_model().eval()
    z = torch.randn(2, 3, 32)
    out = model.predict(z, torch.randn(2, 3, SMALL.block_dim))
    torch.testing.assert_close(out, model.predict(z, torch.randn(2, 3, SMALL.block_dim)))
    woken = wake_adaln(model)
    assert not torch.allclose(out, woken.predict(z, torch.randn(2, 3, SMALL.block_dim)))


def test_encode_shapes_and_input_kinds() -> None:
    model = small_model().eval()
    pixels = pixels_for(SMALL, 2, 4)
    z = model.encode(pixels)
    assert z.shape == (2, 4, SMALL.embed_dim)
    torch.testing.assert_close(model.encode(pixels.float() / 255), z)
    assert model.encode(pixels[0]).shape == (4, SMALL.embed_dim)
    torch.testing.assert_close(model.encode(pixels[0, 1]), z[0, 1])


def test_encode_rejects_wrong_size_and_non_finite_pixels() -> None:
    model = LeWM(preset("tiny").model).eval()
    with pytest.raises(ValueError, match=r"pixels are 32x32 but the model expects 64x64 \(model"):
        model.encode(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    bad = torch.rand(2, 3, 64, 64)
    bad[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="pixels contain NaN or inf"):
        model.encode(bad)


def reference_rollout(model: LeWM, z_ctx: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """MODEL.md §6 written out naively: a Python list of embeddings, one predict per step."""
    zs = list(z_ctx.unbind(1))
    h = len(zs)
    for step in range(blocks.shape[1] - h + 1):
        known = h + step
        window = range(max(0, known - model.cfg.history), known)
        z_win = torch.stack([zs[i] for i in window], dim=1)
        out = model.predict(z_win, blocks[:, window.start : window.stop])
        zs.append(out[:, -1])
    return torch.stack(zs[h:], dim=1)


@pytest.mark.parametrize("history", [1, 2, 3])
@pytest.mark.parametrize("horizon", range(1, 9))
def test_rollout_matches_the_sliding_window_of_section_6(history: int, horizon: int) -> None:
    """The cached rollout equals re-running every window (≤ 1e-4), for every context length."""
    model = wake_adaln(small_model(history=history)).eval()
    for h in range(1, history + 1):
        z_ctx = torch.randn(4, h, 32)
        blocks = torch.randn(4, h - 1 + horizon, SMALL.block_dim)
        with torch.inference_mode():
            out = model.rollout(z_ctx, blocks)
            assert out.shape == (4, horizon, 32)
            assert (out - reference_rollout(model, z_ctx, blocks)).abs().max() <= 1e-4
            torch.testing.assert_close(out[:, 0], model.predict(z_ctx, blocks[:, :h])[:, -1])


def test_rollout_fourth_step_from_one_frame_uses_three_imagined_embeddings() -> None:
    model = wake_adaln(small_model()).eval()
    z0, blocks = torch.randn(3, 1, 32), torch.randn(3, 5, SMALL.block_dim)
    with torch.no_grad():
        imagined = model.rollout(z0, blocks)
        step4 = model.predict(imagined[:, 0:3], blocks[:, 1:4])[:, -1]
    torch.testing.assert_close(imagined[:, 3], step4)


def test_rollout_shares_a_batch_one_context_and_rejects_bad_shapes() -> None:
    model = wake_adaln(small_model()).eval()
    z_ctx, blocks = torch.randn(1, 2, 32), torch.randn(6, 4, SMALL.block_dim)
    with torch.no_grad():
        shared = model.rollout(z_ctx, blocks)
        torch.testing.assert_close(shared, model.rollout(z_ctx.expand(6, -1, -1), blocks))
    assert shared.shape == (6, 3, 32)
    with pytest.raises(ValueError, match="1 to 3 context embeddings"):
        model.rollout(torch.randn(6, 4, 32), blocks)
    with pytest.raises(ValueError, match="need at least 2 blocks"):
        model.rollout(z_ctx, blocks[:, :1])


def test_tiny_preset_loss_is_finite_and_trains_every_module() -> None:
    cfg = dataclasses.replace(preset("tiny").model, sigreg_projections=128)
    torch.manual_seed(0)
    model = LeWM(cfg)
    pixels = pixels_for(cfg, 4, cfg.num_steps)
    blocks = torch.randn(4, cfg.num_steps, cfg.block_dim)
    out = model.loss(pixels, blocks, torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "pred_loss", "sigreg", "z"}
    assert all(torch.isfinite(out[k]) for k in ("loss", "pred_loss", "sigreg"))
    expected = out["pred_loss"] + cfg.sigreg_lambda * out["sigreg"]
    torch.testing.assert_close(out["loss"], expected)
    assert out["z"].shape == (4, cfg.num_steps, cfg.embed_dim) and not out["z"].requires_grad
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    for name in ("encoder", "projector", "predictor", "pred_proj"):
        assert any(p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name
    # AdaLN-zero: the action path is reached through the zero modulation weights first.
    assert model.predictor.transformer.layers[0].adaLN_modulation[1].weight.grad.abs().sum() > 0


def test_prediction_targets_keep_their_gradient() -> None:
    # In eval mode BatchNorm does not mix frames, so the last frame, which is only ever a
    # target, gets a gradient from pred_loss only if the targets are not detached.
    model = small_model().eval()
    pixels = (pixels_for(SMALL, 4, SMALL.num_steps).float() / 255).requires_grad_()
    blocks = torch.randn(4, SMALL.num_steps, SMALL.block_dim)
    model.loss(pixels, blocks)["pred_loss"].backward()
    assert pixels.grad[:, -1].abs().sum() > 0


def test_loss_runs_under_bf16_autocast() -> None:
    model = small_model()
    pixels = pixels_for(SMALL, 4, SMALL.num_steps)
    blocks = torch.randn(4, SMALL.num_steps, SMALL.block_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.loss(pixels, blocks, torch.Generator().manual_seed(0))
    assert out["sigreg"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.encoder.patch_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_bf16_attention_matches_float32_attention(causal: bool) -> None:
    """bf16 on CPU takes the explicit-matmul path; it must attend like SDPA in float32:
    same mask, same scale, same value mixing, within bf16 rounding."""
    torch.manual_seed(0)
    qkv = torch.randn(4, 7, 3 * 32)
    reference = multihead_attention(qkv, heads=2, causal=causal)
    fast = multihead_attention(qkv.bfloat16(), heads=2, causal=causal)
    assert fast.dtype == torch.bfloat16 and fast.shape == reference.shape == (4, 7, 32)
    torch.testing.assert_close(fast.float(), reference, atol=0.03, rtol=0.03)
    other = multihead_attention(qkv, heads=2, causal=not causal)
    assert (other - reference).abs().max() > 0.1  # the check can tell the mask apart


def test_cpu_bf16_attention_applies_dropout() -> None:
    qkv = torch.randn(2, 5, 3 * 16).bfloat16()
    first = multihead_attention(qkv, heads=2, causal=False, dropout_p=0.5)
    second = multihead_attention(qkv, heads=2, causal=False, dropout_p=0.5)
    assert not torch.equal(first, second)
    assert torch.equal(multihead_attention(qkv, 2, False), multihead_attention(qkv, 2, False))


def test_loss_rejects_clips_of_the_wrong_length() -> None:
    model = small_model()
    with pytest.raises(ValueError, match=r"\(B, 4, 3, H, W\)"):
        model.loss(pixels_for(SMALL, 2, 3), torch.randn(2, 3, SMALL.block_dim))


def test_recalibrate_batchnorm_uses_batch_statistics_and_keeps_weights() -> None:
    model = wake_adaln(small_model())
    bn = model.projector.net[1]
    batches = [
        (
            pixels_for(SMALL, 4, SMALL.num_steps),
            torch.randn(4, SMALL.num_steps, SMALL.block_dim),
            None,
        )
        for _ in range(2)
    ]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[torch.Tensor] = []
    hook = bn.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    recalibrate_batchnorm(model, batches)
    hook.remove()

    assert not model.training and bn.momentum == 0.1
    assert len(seen) == 2
    torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(0) for x in seen]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([x.var(0) for x in seen]).mean(0))
    pred_bn = model.pred_proj.net[1]
    assert not torch.equal(pred_bn.running_mean, before["pred_proj.net.1.running_mean"])
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, before[name], rtol=0, atol=0, msg=name)


def test_effective_rank_and_std() -> None:
    g = torch.Generator().manual_seed(0)
    gaussian = torch.randn(4096, 32, generator=g)
    line = torch.randn(4096, 1, generator=g) * torch.randn(1, 32, generator=g)
    assert effective_rank(gaussian) > 0.95 * 32
    assert effective_rank(line) < 1.05
    assert embedding_std(gaussian) == pytest.approx(1.0, abs=0.05)
    assert embedding_std(torch.zeros(16, 8)) == 0.0
