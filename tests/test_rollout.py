"""The cached rollout beyond its equality with the naive one (tests/test_model.py): every
block matters, gradients reach the actions, and training mode is refused."""

from __future__ import annotations

import pytest
import torch
from test_model import reference_rollout, small_model, wake_adaln

from lewm.config import preset
from lewm.model import LeWM
from lewm.plan.mpc import goal_cost
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
            return goal_cost(
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
