"""The world-model seam: every kind builds through the registry, trains, plans, saves and
reloads to identical outputs; PLDM's terms against hand computations; the DINO-WM-style
model's structure; the no-SIGReg ablation's collapse diagnostics; old run folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_DINOWM, SMALL_MODEL

from lewm.baselines.dinowm import DinoWM
from lewm.baselines.dinowm_config import RANDOM_ENCODER_LABEL, DinoWMConfig
from lewm.baselines.pldm import PLDM, pldm_terms
from lewm.baselines.pldm_config import PLDMConfig
from lewm.checkpoint import load_checkpoint
from lewm.config import ConfigError, ModelConfig, RunConfig, resolve
from lewm.envs import proprio_columns
from lewm.model import LeWM
from lewm.model.diagnostics import active_dims, effective_rank
from lewm.plan.mpc import MPCPlanner, plan_flops
from lewm.registry import build_model
from lewm.train.fit import collapse_warning, train

# Each kind, and DINO-WM's noprop variant (a variant's name is its kind, "_", what differs).
KIND_OVERRIDES = {
    "lewm": SMALL_MODEL,
    "pldm": ["model.kind=pldm", *SMALL_MODEL],
    "dinowm": SMALL_DINOWM,
    "dinowm_noprop": [*SMALL_DINOWM, "model.proprio_embed=0"],
}
EXPECTED_CLASS = {"lewm": LeWM, "pldm": PLDM, "dinowm": DinoWM}


@pytest.fixture(scope="module", params=sorted(KIND_OVERRIDES))
def kind_run(request, tmp_path_factory, tworoom_file) -> tuple[str, Path]:
    variant = request.param
    run = tmp_path_factory.mktemp(f"run_{variant}") / "run"
    cfg = resolve("tiny", KIND_OVERRIDES[variant], {"train.max_steps": 3})
    train(tworoom_file, run, cfg, device="cpu", progress=False)
    return variant.split("_")[0], run


def test_each_kind_trains_records_its_kind_and_reloads_identically(kind_run, tworoom_file):
    kind, run = kind_run
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["kind"] == kind
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["model"]["kind"] == kind
    first, second = load_checkpoint(run), load_checkpoint(run)
    assert type(first.model) is EXPECTED_CLASS[kind]
    assert summary["model"]["parameters"] == first.model.param_counts()
    pixels = torch.randint(0, 256, (2, 1, 3, 64, 64), dtype=torch.uint8)
    blocks = torch.randn(4, 5, first.config.model.block_dim)
    with torch.no_grad():
        z1, z2 = first.model.encode(pixels), second.model.encode(pixels)
        r1 = first.model.rollout(z1[:1], blocks)
        r2 = second.model.rollout(z2[:1], blocks)
    assert torch.equal(z1, z2) and torch.equal(r1, r2)
    assert r1.shape == (4, 5, z1.shape[-1])
    assert torch.isfinite(r1).all()


def test_each_kind_logs_its_own_loss_terms(kind_run):
    kind, run = kind_run
    header = next((run / "logs").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    expected = {
        "lewm": {"train/pred_loss", "train/sigreg"},
        "pldm": {"train/pred_loss", "train/std", "train/std_t", "train/cov", "train/cov_t",
                 "train/temporal", "train/idm", "train/sigreg"},
        "dinowm": {"train/pred_loss"},
    }[kind]
    if load_checkpoint(run).config.model.uses_proprio:
        expected |= {"train/pixel_loss", "train/proprio_loss"}
    assert expected <= set(header)
    assert "train/emb_active_dims" in header


def test_each_kind_plans(kind_run):
    kind, run = kind_run
    ckpt = load_checkpoint(run)
    cfg = ckpt.config
    cfg.plan.samples, cfg.plan.elites, cfg.plan.iterations = 16, 4, 2
    m = cfg.model
    columns = proprio_columns(cfg)
    assert columns == (("proprio",) if m.uses_proprio else ())
    planner = MPCPlanner(ckpt.model, ckpt.normalizer, cfg.plan, m.frameskip, m.action_dim,
                         torch.device("cpu"), columns)
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    proprio = (np.array([[0.2, 0.3], [0.5, 0.5]]), np.array([[0.8, 0.3], [0.1, 0.9]]))
    actions, plans = planner.plan(frames, frames[::-1].copy(), gens, proprio=proprio)
    assert actions.shape == (2, cfg.plan.receding_horizon * m.frameskip, m.action_dim)
    assert np.isfinite(actions).all()
    flops = plan_flops(ckpt.model, m.image_size, cfg.plan, m.block_dim, torch.device("cpu"))
    assert flops["iteration"] > 0
    assert flops["plan"] == flops["encode"] + cfg.plan.iterations * flops["iteration"]


def test_dinowm_is_labelled_as_a_random_encoder_without_weights(kind_run):
    kind, run = kind_run
    note = json.loads((run / "train_summary.json").read_text())["model"]["note"]
    assert note.startswith(RANDOM_ENCODER_LABEL) == (kind == "dinowm")
    noprop = kind == "dinowm" and not load_checkpoint(run).config.model.uses_proprio
    assert note.endswith("; noprop") == noprop


def test_registry_refuses_an_unknown_kind_listing_the_kinds():
    with pytest.raises(ConfigError, match=r"model.kind='nope'.*dinowm, lewm, pldm"):
        resolve("tiny", ["model.kind=nope"])
    data = RunConfig().to_dict()
    data["model"]["kind"] = "nope"
    with pytest.raises(ConfigError, match=r"cfg.json: model.kind='nope'.*dinowm, lewm, pldm"):
        RunConfig.from_dict(data, "cfg.json")
    with pytest.raises(TypeError, match="PLDMConfig"):
        build_model(ModelConfig(kind="pldm"))


def test_changing_kind_keeps_the_predictor_but_not_loss_weights():
    cfg = resolve("tiny", ["model.pred_depth=3", "model.kind=pldm", "std_coeff=5"])
    assert isinstance(cfg.model, PLDMConfig)
    assert cfg.model.pred_depth == 3 and cfg.model.image_size == 64 and cfg.model.history == 1
    assert cfg.model.sigreg_lambda == 0.0 and cfg.model.std_coeff == 5.0
    cfg = resolve("tiny", ["model.kind=dinowm", "model.encoder_size=56"])
    assert isinstance(cfg.model, DinoWMConfig)
    assert (cfg.model.enc_dim, cfg.model.image_size, cfg.model.pred_depth) == (384, 64, 4)
    with pytest.raises(ConfigError, match="std_coeff"):
        resolve("tiny", ["std_coeff=5"])  # a PLDM field on a LeWM config


def test_config_round_trips_for_every_kind(tmp_path):
    for overrides in KIND_OVERRIDES.values():
        cfg = resolve("tiny", overrides)
        cfg.save(tmp_path / "c.json")
        assert RunConfig.load(tmp_path / "c.json") == cfg


@pytest.mark.parametrize("variant", sorted(KIND_OVERRIDES))
def test_closed_form_parameter_counts_match_the_modules(variant):
    cfg = resolve("tiny", KIND_OVERRIDES[variant]).model
    counts = build_model(cfg).param_counts()
    assert cfg.num_parameters() == counts["total"]
    if cfg.kind == "dinowm":
        assert cfg.trainable_parameters() == counts["trainable"] < counts["total"]
    else:
        assert counts["trainable"] == counts["total"]


def test_paper_dinowm_has_the_reference_sizes():
    # BASELINES.md §2.1: ViT-S/14 at 224 gives 256 patches of 384; proprio (TwoRoom P = 2)
    # and action (A = 2) embeddings of 10 make tokens of 404, or 394 for noprop.
    cfg = DinoWMConfig()
    assert cfg.encoder_parameters() == 22_056_576
    assert (cfg.patches, cfg.token_dim) == (256, 404)
    assert cfg.trainable_parameters() == 20_195_320 + 110 + 30
    noprop = DinoWMConfig(proprio_embed=0)
    assert noprop.token_dim == 394 and not noprop.uses_proprio
    assert noprop.trainable_parameters() == 19_695_740 + 110


def test_old_run_folder_without_kind_loads_as_lewm(small_run, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(small_run, run)
    config = json.loads((run / "config.json").read_text())
    del config["model"]["kind"]
    (run / "config.json").write_text(json.dumps(config))
    ckpt = load_checkpoint(run)
    assert type(ckpt.model) is LeWM and ckpt.config.model.kind == "lewm"


def _hand_variance_hinge(z: np.ndarray, axis: int) -> float:
    return float(np.mean(np.maximum(0.0, 1 - np.sqrt(z.var(axis=axis, ddof=1) + 1e-4))))


def _hand_off_diagonal(x: np.ndarray) -> float:
    """x (n, D), already centred."""
    n, d = x.shape
    cov = x.T @ x / (n - 1)
    return float(sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / (d * d - d))


def test_pldm_terms_match_a_hand_computation():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 4, 3)) * np.array([0.3, 1.5, 0.8])  # (B, T, D)
    terms = {k: float(v) for k, v in pldm_terms(torch.tensor(z)).items()}
    b, t, _ = z.shape
    centred = z - z.mean(axis=0, keepdims=True)
    assert terms["std"] == pytest.approx(
        np.mean([_hand_variance_hinge(z[:, i], 0) for i in range(t)]), rel=1e-9)
    assert terms["std_t"] == pytest.approx(
        np.mean([_hand_variance_hinge(z[j], 0) for j in range(b)]), rel=1e-9)
    assert terms["cov"] == pytest.approx(
        np.mean([_hand_off_diagonal(centred[:, i]) for i in range(t)]), rel=1e-9)
    assert terms["cov_t"] == pytest.approx(
        np.mean([_hand_off_diagonal(centred[j]) for j in range(b)]), rel=1e-9)
    assert terms["temporal"] == pytest.approx(np.mean((z[:, 1:] - z[:, :-1]) ** 2), rel=1e-9)


def test_pldm_total_is_the_weighted_sum_of_its_terms():
    cfg = resolve("tiny", ["model.kind=pldm", *SMALL_MODEL]).model
    torch.manual_seed(0)
    model = build_model(cfg)
    pixels = torch.randint(0, 256, (6, cfg.num_steps, 3, 64, 64), dtype=torch.uint8)
    out = model.loss(pixels, torch.randn(6, cfg.num_steps, cfg.block_dim))
    expected = (out["pred_loss"] + 18 * out["std"] + 0.7 * out["std_t"] + 12 * out["cov"]
                + 0.2 * out["temporal"])
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.idm.parameters())


def test_dinowm_predictor_is_block_causal_and_its_encoder_frozen():
    cfg = resolve("tiny", [*SMALL_DINOWM, "model.history=2", "model.pred_dropout=0"]).model
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    z = torch.randn(1, 2, cfg.patches * cfg.slot_dim)
    blocks = torch.randn(1, 2, cfg.block_dim)
    changed = z.clone()
    changed[:, 1] += 1.0
    with torch.no_grad():
        a, b = model.predict(z, blocks), model.predict(changed, blocks)
    assert torch.equal(a[:, 0], b[:, 0])  # frame 0's tokens never see frame 1
    assert not torch.allclose(a[:, 1], b[:, 1])
    model.train()
    assert not model.encoder.training  # stays in eval mode when the model trains


def test_dinowm_resizes_frames_for_its_encoder():
    cfg = resolve("tiny", SMALL_DINOWM).model
    model = build_model(cfg).eval()
    with torch.no_grad():
        z = model.encode(torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8))
    assert z.shape == (3, (28 // 14) ** 2 * (32 + 10))
    with pytest.raises(ValueError, match="model.image_size"):
        model.encode(torch.zeros(1, 3, 28, 28))


def test_active_dims_sees_a_collapse_that_the_effective_rank_misses():
    z = torch.randn(512, 16)
    shrunk = z * 0.01  # the same cloud, a hundred times smaller
    assert effective_rank(shrunk) == pytest.approx(effective_rank(z), rel=1e-4)
    assert active_dims(z) == 16 and active_dims(shrunk) == 0
    collapsed = {"emb_active_dims": 0, "emb_std": 0.01, "emb_dim": 16, "pred_mse": 1e-6}
    assert "collapsed" in collapse_warning(collapsed)
    assert collapse_warning({**collapsed, "emb_active_dims": 3}) is None


def test_missing_encoder_weights_are_refused_before_anything_is_written(tworoom_file, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "lewm.cli", "train", "--data", str(tworoom_file), "--out",
         str(out), "--max-steps", "2", "--no-progress", *SMALL_DINOWM,
         f"model.encoder_weights={tmp_path / 'nope.pth'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "nope.pth" in lines[0] and "no such file" in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize("damage", ["shape", "format"])
def test_bad_encoder_weights_are_refused_naming_the_problem(tworoom_file, tmp_path, damage):
    from lewm.baselines.dinov2 import DINOv2

    weights = tmp_path / "dinov2.pth"
    if damage == "shape":
        state = DINOv2(32, 1, 2, 64, 14, 56).state_dict()
        state["blocks.0.attn.qkv.weight"] = torch.zeros(7, 32)
        torch.save(state, weights)
    else:
        weights.write_text("not a weights file\n")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "lewm.cli", "train", "--data", str(tworoom_file), "--out",
         str(out), "--max-steps", "2", "--no-progress", *SMALL_DINOWM,
         f"model.encoder_weights={weights}"],
        capture_output=True, text=True, timeout=300,
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert str(weights) in lines[0]
    if damage == "shape":
        assert "blocks.0.attn.qkv.weight" in lines[0]
    assert not out.exists()
