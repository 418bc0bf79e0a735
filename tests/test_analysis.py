"""Analysis functions on planted signals: each test fails if the analysis is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lewm.analysis.embed import EmbeddedEpisode
from lewm.analysis.probe import probe_features, resolve_targets
from lewm.analysis.rollout_error import rollout_errors
from lewm.analysis.straightness import straightness
from lewm.analysis.surprise import paired_test, perturbation


def _split(x: torch.Tensor, y: torch.Tensor, n_train: int):
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_probes_recover_a_planted_linear_signal():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    y = x @ torch.randn(16, 2, generator=g) + 3.0
    out = probe_features(*_split(x, y, 450), seed=0, mlp_steps=300)
    assert out["linear"]["r"] > 0.99 and out["linear"]["mse"] < 0.01
    assert out["mlp"]["r"] > 0.99


def test_probes_fail_on_noise():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(600, 16, generator=g), torch.randn(600, 2, generator=g)
    out = probe_features(*_split(x, y, 450), seed=0, mlp_steps=300)
    assert abs(out["linear"]["r"]) < 0.15 and out["linear"]["mse"] > 0.9
    assert abs(out["mlp"]["r"]) < 0.2


def test_unknown_probe_target_names_it_and_lists_the_available_ones():
    columns = ("action", "pixels", "proprio", "state", "step_idx")
    assert [t.name for t in resolve_targets("tworoom", None, columns)] == ["agent_pos"]
    with pytest.raises(ValueError, match=r"'block_pos'.*agent_pos, proprio, state"):
        resolve_targets("tworoom", ["block_pos"], columns)


def test_t_test_detects_a_planted_spike_and_not_a_null_one():
    rng = np.random.default_rng(0)
    clean = rng.gamma(2.0, 1.0, size=20)
    assert paired_test(clean + 5.0 + rng.normal(0, 1, 20), clean)["p"] < 0.01
    null = paired_test(clean + rng.normal(0, 1, 20), clean)
    assert null["p"] > 0.05
    assert paired_test(clean, clean) == {"t": 0.0, "p": 1.0, "mean_diff": 0.0}


def test_unknown_perturbation_is_refused():
    with pytest.raises(ValueError, match="unknown perturbation 'melt'.*teleport, color"):
        perturbation("melt")


def test_straightness_is_one_on_a_line_and_near_zero_for_random_steps():
    t = torch.linspace(0, 5, 20)[:, None]
    line = torch.tensor([1.0, -2.0, 0.5]) * t + torch.tensor([3.0, 0.0, 1.0])
    assert straightness(line[None]) == pytest.approx(1.0, abs=1e-9)
    walk = torch.randn(64, 30, 128, generator=torch.Generator().manual_seed(0)).cumsum(1)
    assert abs(straightness(walk)) < 0.02
    zigzag = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert straightness([zigzag, line[:2]]) == pytest.approx(-1.0)  # too short: skipped
    with pytest.raises(ValueError, match="3 or more"):
        straightness([line[:2]])


class StaticIdentity:
    """A world model that encodes a frame to its mean colour and predicts no change."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float().mean(dim=(-2, -1))

    def rollout(self, z_ctx: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        horizon = blocks.shape[1] - (z_ctx.shape[1] - 1)
        return z_ctx[:, -1:].repeat(1, horizon, 1)


def test_rollout_error_is_zero_for_an_identity_model_on_a_static_scene():
    model = StaticIdentity()
    frames = torch.full((10, 3, 8, 8), 77, dtype=torch.uint8)
    ep = EmbeddedEpisode(0, np.arange(10), model.encode(frames), torch.randn(9, 10))
    out = rollout_errors(model, [ep], history=2, horizon=3)
    assert out["horizons"] == [1, 2, 3] and out["starts"] == 10 - 2 - 3 + 1
    assert out["model"] == [0.0, 0.0, 0.0] and out["copy_last"] == [0.0, 0.0, 0.0]
    moving = EmbeddedEpisode(1, np.arange(10), torch.arange(10.0)[:, None], torch.zeros(9, 10))
    out = rollout_errors(model, [moving], history=1, horizon=2)
    assert out["model"] == [1.0, 4.0]
    with pytest.raises(ValueError, match="lower --horizon"):
        rollout_errors(model, [ep], history=2, horizon=9)
