"""Issue 16, configs and checkpoints: every degenerate setting, mistyped or oversized
config, incomplete normalizer and non-finite weight is refused in one line naming the file
and field, before anything is allocated or written; outputs get the usual permissions."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from lewm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lewm.cli import app
from lewm.config import ConfigError, RunConfig, preset, resolve
from lewm.data import Normalizer
from lewm.interop import OfficialCheckpointError, export_official, import_official
from lewm.interop import official as official_module
from lewm.model import LeWM

runner = CliRunner()
# SMALL_MODEL's encoder (width, depth, heads, mlp), registered as an official ViT size so
# that a small run exports to the official layout.
MICRO_VIT = (32, 1, 2, 64)


def small_config() -> RunConfig:
    cfg = resolve("tiny", SMALL_MODEL)
    cfg.env = "tworoom"
    return cfg


def small_norm() -> Normalizer:
    return Normalizer({"action": np.zeros(2)}, {"action": np.ones(2)})


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """An untrained run folder of the small model."""
    torch.manual_seed(0)
    cfg = small_config()
    save_checkpoint(tmp_path / "run", LeWM(cfg.model), cfg, small_norm())
    return tmp_path / "run"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.lr=inf", "train.lr"),
        ("train.lr=nan", "train.lr"),
        ("train.lr=0", "train.lr"),
        ("train.max_steps=0", "train.max_steps"),
        ("train.max_steps=-1", "train.max_steps"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.val_every=0", "train.val_every"),
        ("train.weight_decay=-0.1", "train.weight_decay"),
        ("train.warmup_fraction=1", "train.warmup_fraction"),
        ("train.precision=fp8", "train.precision"),
        ("train.max_minutes=inf", "train.max_minutes"),
        ("model.patch_size=7", "model.patch_size"),
        ("model.enc_heads=0", "model.enc_heads"),
        ("model.enc_heads=3", "model.enc_heads"),
        ("model.history=0", "model.history"),
        ("model.num_preds=0", "model.num_preds"),
        ("model.pred_dropout=1", "model.pred_dropout"),
        ("model.sigreg_lambda=-1", "model.sigreg_lambda"),
        ("model.sigreg_knots=1", "model.sigreg_knots"),
        ("model.image_size=2048", "model.image_size"),
        ("model.enc_dim=100000000", "model.enc_dim"),
        ("data.val_fraction=0", "data.val_fraction"),
        ("data.val_fraction=1", "data.val_fraction"),
        ("seed=-1", "seed"),
        (f"seed={2**32}", "seed"),
        ("plan.samples=0", "plan.samples"),
        ("plan.elites=1", "plan.elites"),
        ("plan.elites=400", "plan.elites"),
        ("plan.receding_horizon=6", "plan.receding_horizon"),
        ("plan.icem_decay=0.5", "plan.icem_decay"),
        ("eval.episodes=0", "eval.episodes"),
        ("eval.budget=0", "eval.budget"),
        ("eval.goal_offset=0", "eval.goal_offset"),
    ],
)
def test_degenerate_settings_are_refused_naming_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(field)}=\S+: expected ") as info:
        resolve("tiny", [override])
    assert info.value.field == field


def test_a_bad_option_is_refused_even_if_an_override_replaces_it() -> None:
    with pytest.raises(ConfigError, match="^train.batch_size=0: expected"):
        resolve("tiny", ["train.batch_size=8"], {"train.batch_size": 0})


def test_sound_settings_still_resolve() -> None:
    cfg = resolve("tiny", ["train.lr=1e-3", "pred_dropout=0", "seed=4294967295",
                           "plan.solver=gradient", "plan.samples=4", "train.max_steps=1e3"])
    assert (cfg.seed, cfg.plan.samples, cfg.train.max_steps) == (2**32 - 1, 4, 1000)
    preset("paper").validate()


@pytest.mark.parametrize("text", ["1.5e0", "1e400"])
def test_integer_overrides_refuse_fractions_and_overflow(text: str) -> None:
    with pytest.raises(ConfigError, match="train.max_steps.*expected a value of type int"):
        resolve("tiny", [f"train.max_steps={text}"])


@pytest.mark.parametrize("name", ["tiny", "paper", "small", "odd"])
def test_parameter_count_is_known_without_building_the_model(name: str) -> None:
    """The closed form that sizes a config before allocating agrees with the model."""
    small = small_config().model
    model = {
        "small": small,
        "odd": dataclasses.replace(small, pred_heads=3, frameskip=3, history=4, action_dim=3),
    }.get(name) or preset(name).model
    assert model.num_parameters() == LeWM(model).param_counts()["total"]


def test_a_model_too_big_for_this_machine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lewm.config_checks.physical_memory", lambda: 2**30)
    preset("tiny").validate()  # 2.4M parameters: 38 MB to train
    with pytest.raises(ConfigError, match=r"^model\.pred_mlp=200000: expected a smaller.*GiB"):
        resolve("tiny", ["model.pred_mlp=200000"])


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["config", "train.lr=inf"], "train.lr"),
        (["config", "model.enc_dim=100000000"], "model.enc_dim"),
        (["train", "--data", "nosuch.h5", "--out", "run", "--max-steps", "0"], "max_steps"),
        (["train", "--data", "nosuch.h5", "--out", "run", "--max-steps", "-1"], "max_steps"),
        (["train", "--data", "nosuch.h5", "--out", "run", "--seed", str(2**70)], "--seed"),
        (["train", "--data", "nosuch.h5", "--out", "run", "--seed", "-1"], "--seed"),
    ],
)
def test_cli_refuses_degenerate_settings_in_one_line(
    args: list[str], field: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = cli(*args)
    assert code == 2, output
    assert field in output and "Traceback" not in output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("model", "patch_size", "8", "model.patch_size: expected an integer"),
        ("model", "history", 1.5, "model.history: expected an integer"),
        ("model", "enc_heads", True, "model.enc_heads: expected an integer"),
        ("model", "enc_heads", 0, "model.enc_heads=0: expected an integer >= 1"),
        ("train", "lr", "fast", "train.lr: expected a number"),
        ("plan", "compile", 1, "plan.compile: expected true or false"),
        ("data", "path", 3, "data.path: expected a string"),
        (None, "seed", 2**40, f"seed={2**40}: expected an integer in"),
        (None, "model", [], "model: expected an object"),
    ],
)
def test_mistyped_config_json_is_refused_naming_file_and_field(
    run: Path, section: str | None, key: str, value, expected: str
) -> None:
    edit_json(run / "config.json", lambda d: (d[section] if section else d).update({key: value}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(run)
    message = str(info.value)
    assert expected in message
    assert message.startswith(f"{run / 'config.json'}: ")
    assert message.count(str(run)) == 1


def test_mistyped_config_fails_the_cli_in_one_line(run: Path, tmp_path: Path) -> None:
    edit_json(run / "config.json", lambda d: d["model"].update(enc_heads=0))
    code, output = cli("export-checkpoint", str(run), "--out", str(tmp_path / "out"))
    assert code == 2, output
    assert "config.json" in output and "model.enc_heads" in output
    assert "Traceback" not in output
    assert not (tmp_path / "out").exists()


def test_an_oversized_config_is_refused_before_allocating(tmp_path: Path) -> None:
    data = small_config().to_dict()
    data["model"]["enc_dim"] = 100_000_000
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"config\.json: model\.enc_dim=100000000: .*GiB"):
        RunConfig.load(tmp_path / "config.json")


@pytest.mark.parametrize(
    ("columns", "expected"),
    [({}, "no statistics for column 'action'"),
     ({"action": {"mean": [0, 0, 0], "std": [1, 1, 1]}}, "expected 2 values")],
)
def test_a_normalizer_that_cannot_scale_actions_is_refused(
    run: Path, columns: dict, expected: str
) -> None:
    (run / "normalizer.json").write_text(json.dumps({"columns": columns}))
    with pytest.raises(CheckpointError, match=expected) as info:
        load_checkpoint(run)
    assert str(info.value).startswith(f"{run / 'normalizer.json'}: ")


@pytest.mark.parametrize("key", ["projector.net.1.running_var", "predictor.pos_embedding"])
def test_non_finite_weights_are_refused_on_load(run: Path, key: str) -> None:
    state = load_file(str(run / "model.safetensors"))
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(run / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor {key} holds NaN"):
        load_checkpoint(run)


def test_non_finite_weights_are_never_written(tmp_path: Path) -> None:
    cfg = small_config()
    model = LeWM(cfg.model)
    with torch.no_grad():
        model.encoder.norm.weight[0] = float("inf")
    with pytest.raises(CheckpointError, match="encoder.norm.weight holds NaN or inf"):
        save_checkpoint(tmp_path / "run", model, cfg, small_norm())
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_checkpoint_files_follow_the_umask(run: Path, umask_022: None) -> None:
    cfg = small_config()
    save_checkpoint(run.parent / "again", LeWM(cfg.model), cfg, small_norm())
    for name in ("model.safetensors", "config.json", "normalizer.json"):
        assert stat.S_IMODE((run.parent / "again" / name).stat().st_mode) == 0o644, name


@pytest.fixture
def official(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The small run exported to the official layout."""
    monkeypatch.setitem(official_module.VIT_SIZES, "micro", MICRO_VIT)
    export_official(run, tmp_path / "official")
    return tmp_path / "official"


def test_exported_and_imported_folders_follow_the_umask(
    official: Path, tworoom_file: Path, tmp_path: Path, umask_022: None
) -> None:
    assert stat.S_IMODE(official.stat().st_mode) == 0o755
    import_official(official, tmp_path / "imported", tworoom_file)
    assert stat.S_IMODE((tmp_path / "imported").stat().st_mode) == 0o755
    mode = (tmp_path / "imported" / "model.safetensors").stat().st_mode
    assert stat.S_IMODE(mode) == 0o644


def test_import_refuses_non_finite_weights(
    official: Path, tworoom_file: Path, tmp_path: Path
) -> None:
    state = torch.load(official / "weights.pt", weights_only=True)
    state["pred_proj.net.1.running_mean"][0] = float("nan")
    torch.save(state, official / "weights.pt")
    key = "pred_proj.net.1.running_mean"
    with pytest.raises(OfficialCheckpointError, match=rf"weights\.pt: key '{key}' holds NaN"):
        import_official(official, tmp_path / "imported", tworoom_file)
    assert not (tmp_path / "imported").exists()


def test_import_refuses_an_unknown_env_before_writing(
    official: Path, tworoom_file: Path, tmp_path: Path
) -> None:
    code, output = cli("import-checkpoint", str(official), "--out", str(tmp_path / "imported"),
                       "--data", str(tworoom_file), "--env", "nosuch")
    assert code == 2, output
    assert "unknown environment 'nosuch'" in output and "tworoom" in output
    assert "Traceback" not in output
    assert not (tmp_path / "imported").exists()


@pytest.mark.parametrize(
    ("section", "key", "value", "field"),
    [
        ("predictor", "mlp_dim", 100_000_000, "predictor.mlp_dim"),
        ("predictor", "heads", 0, "predictor.heads"),
        ("predictor", "dropout", 1.0, "predictor.dropout"),
        ("encoder", "patch_size", 7, "encoder.patch_size"),
    ],
)
def test_an_official_config_is_validated_before_allocating(
    official: Path, section: str, key: str, value, field: str
) -> None:
    cfg = json.loads((official / "config.json").read_text())
    cfg[section][key] = value
    with pytest.raises(OfficialCheckpointError, match=rf"^src/config.json: field '{field}': "):
        official_module.model_config_from_official(cfg, action_dim=2, source="src/config.json")
