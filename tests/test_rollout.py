"""The cached rollout beyond its equality with the naive one (tests/test_model.py): every
block matters, gradients reach the actions, and training mode is refused."""

from __future__ import annotations

import pytest
import torch
from test_model import reference_rollout, small_model, wake_adaln

from lewm.config import preset
from lewm.model import LeWM
from lewm.plan.solvers import CEM


def model_with_history(history: int) -> LeWM:
    cfg = preset("tiny").model
    cfg.image_size, cfg.patch_size, cfg.enc_depth = 16, 8, 1
    cfg.pred_depth, cfg.embed_dim, cfg.proj_hidden, cfg.history = 2, 32, 64, history
    torch.manual_seed(history)
    model = LeWM(cfg)
    # Non-zero modulation so that actions and positions matter (AdaLN-zero starts at 0).
    for layer in model.predictor.transformer.layers:
        torch.nn.init.normal_(layer.adaLN_modulation[1].weight, std=0.2)
    return model.eval()


def test_rollout_depends_on_every_candidate_block():
    model = model_with_history(3)
    z = torch.randn(2, 1, 32)
    blocks = torch.randn(2, 5, model.cfg.block_dim)
    with torch.inference_mode():
        base = model.rollout(z, blocks)[:, -1]
        for i in range(5):
            changed = blocks.clone()
            changed[:, i] += 1.0
            assert not torch.allclose(model.rollout(z, changed)[:, -1], base)


def test_rollout_is_differentiable_in_the_actions():
    model = model_with_history(3)
    z = torch.randn(2, 1, 32)
    blocks = torch.randn(2, 5, model.cfg.block_dim, requires_grad=True)
    model.rollout(z, blocks)[:, -1].pow(2).sum().backward()
    assert blocks.grad is not None and blocks.grad.abs().sum() > 0


def test_rollout_refuses_training_mode():
    model = model_with_history(2).train()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.rollout(torch.randn(1, 1, 32), torch.randn(1, 3, model.cfg.block_dim))


def test_cem_plans_the_same_through_the_cached_and_the_naive_rollout():
    """Same seed, same CEM, cost through either rollout: the same plan."""
    model = wake_adaln(small_model()).eval()
    z0, z_goal = torch.randn(1, 1, 32), torch.randn(1, 32)

    def cost_with(rollout):
        def cost(candidates: torch.Tensor) -> torch.Tensor:
            return model.planning_cost(
                rollout(model, z0.expand(candidates.shape[1], -1, -1), candidates[0]), z_goal
            )[None]

        return cost

    solver, shape = CEM(64, 8, 6), (5, model.cfg.block_dim)
    with torch.inference_mode():
        fast = solver.solve(
            cost_with(LeWM.rollout), shape, generators=[torch.Generator().manual_seed(3)]
        )
        naive = solver.solve(
            cost_with(reference_rollout), shape, generators=[torch.Generator().manual_seed(3)]
        )
        other = solver.solve(
            cost_with(LeWM.rollout), shape, generators=[torch.Generator().manual_seed(4)]
        )
    torch.testing.assert_close(fast, naive, atol=1e-6, rtol=0)
    assert (fast - other).abs().max() > 1e-3  # the plan does depend on the draws


def test_rollout_does_only_the_matmuls_an_exact_rollout_needs():
    """Known answer, one context frame, horizon 5, window 3: nine token passes per layer
    (window 0 grown token by token, windows 1 and 2 in one go each); queries only for the
    six passes with an earlier token in their window; in the last layer, the output
    projection and MLP only for the five read-out passes, of which four need a query. The
    modulation is one pass per token and layer. Fails if queries are computed for a lone
    token, or if a window is recomputed."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model_with_history(3)
    samples, horizon = 4, 5
    z, blocks = torch.randn(samples, 1, 32), torch.randn(samples, horizon, model.cfg.block_dim)
    layer = model.predictor.transformer.layers[0]
    dim, inner = layer.attn.to_qkv.in_features, layer.attn.to_qkv.out_features // 3
    hidden, depth = layer.mlp.net[1].out_features, len(model.predictor.transformer.layers)

    def rows_flops(rows: int, fan_in: int, fan_out: int) -> int:
        return 2 * samples * rows * fan_in * fan_out

    def block_flops(passes: int, queries: int, kept: int) -> int:
        return (rows_flops(passes, dim, 2 * inner) + rows_flops(queries, dim, inner)
                + rows_flops(kept, inner, dim) + 2 * rows_flops(kept, dim, hidden))

    expected = ((depth - 1) * block_flops(9, 6, 9) + block_flops(9, 4, 5)
                + depth * rows_flops(horizon, dim, 6 * dim))
    counted = {}
    for name, run in (
        ("rollout", lambda: model.rollout(z, blocks)),
        ("actions", lambda: model.embed_actions(blocks)),
        ("readout", lambda: model.pred_proj(torch.randn(samples * horizon, dim))),
    ):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            run()
        counted[name] = counter.get_total_flops()
    assert counted["rollout"] - counted["actions"] - counted["readout"] == expected


def test_bf16_planning_rolls_out_in_bf16_and_returns_float32():
    """plan.precision=bf16: the rollout runs under bf16 autocast (close to float32, not
    equal) and hands float32 embeddings to the cost; an unknown precision is refused."""
    import dataclasses

    import numpy as np

    from lewm.config import PlanConfig
    from lewm.data.normalize import Normalizer
    from lewm.plan.mpc import MPCPlanner

    model = model_with_history(3)
    a = model.cfg.action_dim
    norm = Normalizer(mean={"action": np.zeros(a)}, std={"action": np.ones(a)})
    cfg = PlanConfig(samples=8, elites=2, iterations=2, precision="bf16")
    planner = MPCPlanner(model, norm, cfg, model.cfg.frameskip, a, torch.device("cpu"))
    z, blocks = torch.randn(6, 1, 32), torch.randn(6, 5, model.cfg.block_dim)
    with torch.no_grad():
        low, full = planner.rollout(z, blocks), model.rollout(z, blocks)
    assert low.dtype == torch.float32
    assert 0 < (low - full).abs().max() < 0.05 * full.abs().max()
    with pytest.raises(ValueError, match="plan.precision"):
        MPCPlanner(model, norm, dataclasses.replace(cfg, precision="fp16"),
                   model.cfg.frameskip, a, torch.device("cpu"))
