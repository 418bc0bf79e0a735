"""DINO-WM's proprioception (BASELINES.md §2): joined to every patch of the latent, trained
through the predictor's input only, priced in the planning cost, and carried from the data
file and the environment to the planner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_DINOWM

from lewm.checkpoint import CheckpointError, load_checkpoint
from lewm.config import ConfigError, EvalConfig, resolve
from lewm.data import ClipDataset, Normalizer, open_store
from lewm.data.normalize import join_columns
from lewm.plan import mpc
from lewm.plan.evaluate import evaluate_run
from lewm.registry import build_model
from lewm.train.fit import train


def _model(*overrides: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = resolve("tiny", [*SMALL_DINOWM, "model.pred_dropout=0", *overrides]).model
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def proprio_run(tmp_path_factory, tworoom_file) -> Path:
    run = tmp_path_factory.mktemp("dinowm_proprio") / "run"
    train(tworoom_file, run, resolve("tiny", SMALL_DINOWM, {"train.max_steps": 2}),
          device="cpu", progress=False)
    return run


def test_encode_joins_the_proprio_embedding_to_every_patch():
    model = _model()
    cfg = model.cfg
    pixels = torch.randint(0, 256, (2, 3, 3, 64, 64), dtype=torch.uint8)
    proprio = torch.randn(2, 3, cfg.proprio_dim)
    with torch.no_grad():
        slots = model.encode(pixels, proprio).view(2, 3, cfg.patches, cfg.slot_dim)
        blind = model.encode(pixels).view(2, 3, cfg.patches, cfg.slot_dim)
        expected = model.proprio_encoder(proprio)
        mean_state = model.proprio_encoder(torch.zeros(cfg.proprio_dim))
    for p in range(cfg.patches):
        torch.testing.assert_close(slots[:, :, p, cfg.enc_dim :], expected)
        torch.testing.assert_close(blind[:, :, p, cfg.enc_dim :], mean_state.expand(2, 3, -1))
    assert torch.equal(slots[..., : cfg.enc_dim], blind[..., : cfg.enc_dim])
    with pytest.raises(ValueError, match=r"model.proprio_dim"):
        model.encode(pixels, torch.randn(2, 3, cfg.proprio_dim + 1))


def test_loss_averages_the_slots_against_detached_targets():
    model = _model()
    cfg = model.cfg
    model.train()
    pixels = torch.randint(0, 256, (2, cfg.num_steps, 3, 64, 64), dtype=torch.uint8)
    blocks = torch.randn(2, cfg.num_steps, cfg.block_dim)
    proprio = torch.randn(2, cfg.num_steps, cfg.proprio_dim)
    out = model.loss(pixels, blocks, proprio=proprio)
    e, r = cfg.enc_dim, cfg.proprio_embed
    torch.testing.assert_close(
        out["pred_loss"], (e * out["pixel_loss"] + r * out["proprio_loss"]) / (e + r)
    )
    assert not out["z"].requires_grad
    out["loss"].backward()
    got = model.proprio_encoder.weight.grad.clone()
    assert got.abs().sum() > 0  # it learns, through the predictor's input
    model.zero_grad()
    z = model.encode(pixels, proprio)
    pred = model.predict(z[:, : cfg.history], blocks[:, : cfg.history])
    F.mse_loss(pred, z[:, 1:].detach()).backward()
    torch.testing.assert_close(model.proprio_encoder.weight.grad, got)


@pytest.mark.parametrize("weight", [0.5, 0.0])
def test_planning_cost_adds_the_first_patchs_proprio_term(weight):
    model = _model(f"model.proprio_cost={weight}")
    cfg = model.cfg
    goal = torch.zeros(1, cfg.patches, cfg.slot_dim)
    last = goal.clone()
    last[..., : cfg.enc_dim] = 2.0  # every patch feature off by 2: pixel term 4
    last[:, 0, cfg.enc_dim :] = 3.0  # the first patch's proprio off by 3: proprio term 9
    last[:, 1:, cfg.enc_dim :] = 100.0  # the other patches' copies are not read
    predicted = torch.stack([torch.zeros_like(last), last], dim=1).flatten(-2)
    cost = model.planning_cost(predicted, goal.flatten(-2))
    torch.testing.assert_close(cost, torch.tensor([4.0 + weight * 9.0]))


def test_noprop_cost_is_the_mean_over_patch_features():
    model = _model("model.proprio_embed=0")
    d = model.cfg.patches * model.cfg.enc_dim
    predicted = torch.full((2, 3, d), 1.5)
    torch.testing.assert_close(model.planning_cost(predicted, torch.zeros(2, d)),
                               torch.full((2,), 2.25))


def test_clips_carry_each_frames_z_scored_proprio(tworoom_file):
    store = open_store(tworoom_file)
    norm = Normalizer.fit(store, ("action", "proprio"))
    clips = ClipDataset(store, np.arange(2), 4, 5, norm, ("proprio",))
    start = int(clips.starts[3])
    raw = store.read("proprio", start + np.arange(4) * 5)
    expected = (raw - norm.mean["proprio"]) / norm.std["proprio"]
    np.testing.assert_allclose(clips[3]["proprio"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert "proprio" not in ClipDataset(store, np.arange(2), 4, 5, norm)[3]


def test_normalizer_z_scores_joined_columns():
    norm = Normalizer({"yaw": np.float64(1.0), "pos": np.array([0.0, 10.0])},
                      {"yaw": np.float64(2.0), "pos": np.array([1.0, 5.0])})
    values = {"yaw": np.array([3.0, 5.0]), "pos": np.array([[1.0, 10.0], [2.0, 20.0]])}
    joined = join_columns(values, ("yaw", "pos"), 2)
    np.testing.assert_array_equal(joined, [[3.0, 1.0, 10.0], [5.0, 2.0, 20.0]])
    np.testing.assert_allclose(norm.transform(("yaw", "pos"), joined),
                               [[1.0, 1.0, 0.0], [2.0, 2.0, 2.0]])
    with pytest.raises(ValueError, match="yaw, pos join to 3 values per row, got rows of 2"):
        norm.transform(("yaw", "pos"), joined[:, :2])
    norm.require(("yaw", "pos"), 3, "n.json")
    with pytest.raises(ValueError, match=r"n.json: columns yaw, pos: expected 4 values"):
        norm.require(("yaw", "pos"), 4, "n.json")
    with pytest.raises(ValueError, match=r"n.json: no statistics for column 'grip'"):
        norm.require(("yaw", "grip"), 3, "n.json")


def test_training_on_data_without_proprio_is_refused_before_anything_is_written(
    tworoom_file, tmp_path
):
    data = tmp_path / "noproprio.h5"
    shutil.copy(tworoom_file, data)
    with h5py.File(data, "a") as f:
        del f["proprio"]
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"no proprioception column 'proprio'.*proprio_embed=0"):
        train(data, out, resolve("tiny", SMALL_DINOWM, {"train.max_steps": 1}),
              device="cpu", progress=False)
    assert not out.exists()


def test_the_run_records_its_proprio_width_and_statistics(proprio_run):
    saved = json.loads((proprio_run / "config.json").read_text())["model"]
    assert (saved["proprio_dim"], saved["proprio_embed"]) == (2, 10)
    stats = json.loads((proprio_run / "normalizer.json").read_text())["columns"]
    assert set(stats) == {"action", "proprio"} and len(stats["proprio"]["mean"]) == 2


def test_a_checkpoint_without_proprio_statistics_is_refused(proprio_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(proprio_run, run)
    stats = json.loads((run / "normalizer.json").read_text())
    del stats["columns"]["proprio"]
    (run / "normalizer.json").write_text(json.dumps(stats))
    with pytest.raises(CheckpointError, match=r"normalizer.json: no statistics for column"):
        load_checkpoint(run)


def test_evaluation_plans_from_the_datasets_then_the_environments_proprio(
    proprio_run, tworoom_file, monkeypatch
):
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    plan = mpc.MPCPlanner.plan

    def spy(self, observations, goals, generators, previous=None, proprio=None, past=None):
        seen.append((proprio[0].copy(), proprio[1].copy()))
        return plan(self, observations, goals, generators, previous, proprio, past)

    monkeypatch.setattr(mpc.MPCPlanner, "plan", spy)
    cfg = EvalConfig(episodes=2, budget=10, split="all", gifs=0, batch=2)
    plan_cfg = ["samples=8", "elites=2", "iterations=1", "receding_horizon=1"]  # 5 steps each
    result, _ = evaluate_run(proprio_run, tworoom_file, cfg, plan_cfg, solver="cem",
                             device="cpu", progress=False)
    store = open_store(tworoom_file)
    starts = np.array([e.start_row for e in result.episodes])
    first_now, first_goal = seen[0]
    np.testing.assert_allclose(first_now, store.read("proprio", starts))
    np.testing.assert_allclose(first_goal, store.read("proprio", starts + cfg.goal_offset))
    # Five steps cannot cover a 25-step goal: both replan, from where the env says they are.
    assert len(seen) == 2 and seen[1][0].shape == first_now.shape
    assert not np.allclose(seen[1][0], first_now)
    np.testing.assert_allclose(seen[1][1], first_goal)
