"""Official checkpoints in and out: key layout, numerical equivalence with Hugging Face's ViT,
round trips, and bad input that must fail with a clear error and leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lewm.checkpoint import load_checkpoint
from lewm.cli import app
from lewm.config import ModelConfig
from lewm.interop import (
    OfficialCheckpointError,
    export_official,
    import_official,
    model_config_from_official,
    official_config,
    read_weights,
)
from lewm.interop import official as official_module
from lewm.interop.official import official_shapes
from lewm.model import ActionEncoder, Predictor, Projector

# A model of the official structure, small enough for two shared CPU cores: "micro" is
# registered as a ViT size for these tests only.
MICRO_VIT = (32, 2, 2, 64)
SMALL = ModelConfig(
    image_size=56,
    patch_size=14,
    enc_dim=32,
    enc_depth=2,
    enc_heads=2,
    enc_mlp=64,
    embed_dim=32,
    proj_hidden=48,
    pred_depth=2,
    pred_heads=2,
    pred_dim_head=8,
    pred_mlp=40,
    action_hidden=128,
    action_dim=2,
    frameskip=5,
)
runner = CliRunner()


@pytest.fixture(autouse=True)
def micro_vit(monkeypatch):
    monkeypatch.setitem(official_module.VIT_SIZES, "micro", MICRO_VIT)


def random_official(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every official key with random values: no identity LayerNorm or zero adaLN hides a
    mix-up; BatchNorm variances stay positive."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in official_shapes(cfg).items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.2
    return out


def write_official(folder: Path, state: dict, cfg: ModelConfig) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps(official_config(cfg)))
    return folder


def write_data(path: Path, size: int = 56, action_dim: int = 2, env: str | None = None) -> Path:
    """A minimal official-layout file: three episodes, NaN last actions, no env attribute."""
    lens = np.array([12, 9, 15])
    n = int(lens.sum())
    rng = np.random.default_rng(0)
    action = rng.normal(size=(n, action_dim)).astype(np.float32)
    action[np.cumsum(lens) - 1] = np.nan
    with h5py.File(path, "w") as f:
        if env:
            f.attrs["env"] = env
        f["ep_len"] = lens.astype(np.int32)
        f["ep_offset"] = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        f["pixels"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        f["action"] = action
        f["step_idx"] = np.concatenate([np.arange(k) for k in lens]).astype(np.int32)
        f["ep_idx"] = np.repeat(np.arange(3), lens).astype(np.int32)
    return path


def no_leftovers(folder: Path) -> bool:
    return not any(".part" in p.name for p in folder.iterdir())


def test_paper_layout_is_the_303_official_keys():
    shapes = official_shapes(ModelConfig())
    assert len(shapes) == 303
    assert sum(k.startswith("encoder.") for k in shapes) == 198
    assert sum(k.startswith("predictor.") for k in shapes) == 81
    expected = {
        "encoder.embeddings.position_embeddings": (1, 257, 192),
        "encoder.embeddings.patch_embeddings.projection.weight": (192, 3, 14, 14),
        "encoder.encoder.layer.11.attention.attention.value.weight": (192, 192),
        "encoder.encoder.layer.0.attention.output.dense.bias": (192,),
        "encoder.encoder.layer.3.intermediate.dense.weight": (768, 192),
        "encoder.encoder.layer.3.output.dense.weight": (192, 768),
        "encoder.encoder.layer.5.layernorm_after.bias": (192,),
        "encoder.layernorm.weight": (192,),
        "predictor.pos_embedding": (1, 3, 192),
        "predictor.transformer.layers.5.attn.to_qkv.weight": (3072, 192),
        "predictor.transformer.layers.0.adaLN_modulation.1.weight": (1152, 192),
        "predictor.transformer.layers.2.mlp.net.4.weight": (192, 2048),
        "action_encoder.patch_embed.weight": (10, 10, 1),
        "action_encoder.embed.0.weight": (768, 10),
        "pred_proj.net.1.num_batches_tracked": (),
        "projector.net.3.weight": (192, 2048),
    }
    for key, shape in expected.items():
        assert tuple(shapes[key]) == shape, key


def test_matches_hugging_face_vit_and_reference_modules(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=56,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    hf = transformers.ViTModel(hf_cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in hf.parameters():  # HF starts LayerNorms at identity; make them matter
            p.add_(torch.randn_like(p) * 0.1)
    state = random_official(SMALL)
    hf_state = {f"encoder.{k}": v for k, v in hf.state_dict().items()}
    assert set(hf_state) == {k for k in state if k.startswith("encoder.")}
    state.update(hf_state)
    src = write_official(tmp_path / "official", state, SMALL)
    data = write_data(tmp_path / "data.h5")
    import_official(src, tmp_path / "run", data, env="tworoom")
    model = load_checkpoint(tmp_path / "run").model

    def sub(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    c = SMALL
    projector = Projector(c.enc_dim, c.proj_hidden, c.embed_dim)
    pred_proj = Projector(c.embed_dim, c.proj_hidden, c.embed_dim)
    action_encoder = ActionEncoder(c.block_dim, c.action_hidden, c.embed_dim)
    predictor = Predictor(
        c.embed_dim,
        c.history,
        c.pred_depth,
        c.pred_heads,
        c.pred_dim_head,
        c.pred_mlp,
        c.pred_dropout,
    )
    for name, module in [
        ("projector.", projector),
        ("pred_proj.", pred_proj),
        ("action_encoder.", action_encoder),
        ("predictor.", predictor),
    ]:
        module.load_state_dict(sub(name))
        module.eval()

    pixels = torch.randint(0, 256, (2, 3, 3, 56, 56), dtype=torch.uint8)
    blocks = torch.randn(2, 3, c.block_dim)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        x = ((pixels.float() / 255 - mean) / std).reshape(-1, 3, 56, 56)
        ref_cls = hf(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0]
        ref_z = projector(ref_cls).reshape(2, 3, -1)
        ref_pred = pred_proj(predictor(ref_z, action_encoder(blocks)))
        cls = model.encoder(x)[:, 0]
        z = model.encode(pixels)
        pred = model.predict(z, blocks)
    torch.testing.assert_close(cls, ref_cls, atol=1e-5, rtol=0)
    torch.testing.assert_close(z, ref_z, atol=1e-5, rtol=0)
    torch.testing.assert_close(pred, ref_pred, atol=1e-5, rtol=0)


def test_import_then_export_gives_back_the_same_tensors(tmp_path):
    state = random_official(SMALL)
    src = write_official(tmp_path / "official", state, SMALL)
    data = write_data(tmp_path / "data.h5")
    cfg = import_official(src, tmp_path / "run", data, env="tworoom")
    assert cfg.model == SMALL and cfg.env == "tworoom"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.json",
        "model.safetensors",
        "normalizer.json",
    ]
    assert export_official(tmp_path / "run", tmp_path / "back") == len(state)
    back = torch.load(tmp_path / "back" / "weights.pt", weights_only=True)
    assert list(back) == list(official_shapes(SMALL))
    assert set(back) == set(state)
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype, key
        assert torch.equal(back[key], tensor), key
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert exported == json.loads((src / "config.json").read_text())
    assert model_config_from_official(exported, action_dim=2) == SMALL


def test_normalizer_comes_from_the_data_file(tmp_path):
    src = write_official(tmp_path / "official", random_official(SMALL), SMALL)
    data = write_data(tmp_path / "data.h5", env="tworoom")
    import_official(src, tmp_path / "run", data)
    norm = load_checkpoint(tmp_path / "run").normalizer
    with h5py.File(data) as f:
        action = f["action"][()]
    np.testing.assert_allclose(norm.mean["action"], np.nanmean(action, axis=0), rtol=1e-6)
    np.testing.assert_allclose(norm.std["action"], np.nanstd(action, axis=0, ddof=1), rtol=1e-6)


class NotATensor:
    pass


def break_missing(state):
    del state["encoder.encoder.layer.1.attention.attention.key.bias"]
    return state, "encoder.encoder.layer.1.attention.attention.key.bias"


def break_extra(state):
    state["encoder.pooler.dense.weight"] = torch.zeros(32, 32)
    return state, "encoder.pooler.dense.weight"


def break_shape(state):
    state["action_encoder.patch_embed.weight"] = torch.zeros(10, 25, 1)
    return state, "action_encoder.patch_embed.weight"


def break_value(state):
    state["predictor.pos_embedding"] = [1.0, 2.0]
    return state, "predictor.pos_embedding"


def break_object(state):
    state["predictor.pos_embedding"] = NotATensor()
    return state, "NotATensor"


def break_container(state):
    return list(state.values()), "expected a state dict"


@pytest.mark.parametrize(
    "breaker",
    [break_missing, break_extra, break_shape, break_value, break_object, break_container],
)
def test_bad_weights_name_the_key_and_write_nothing(tmp_path, breaker):
    state, needle = breaker(random_official(SMALL))
    src = write_official(tmp_path / "official", state, SMALL)
    data = write_data(tmp_path / "data.h5")
    with pytest.raises(OfficialCheckpointError, match=needle):
        import_official(src, tmp_path / "run", data, env="tworoom")
    assert not (tmp_path / "run").exists()
    assert no_leftovers(tmp_path)


def test_unpickling_never_runs_code(tmp_path):
    src = write_official(tmp_path / "official", {"x": torch.zeros(1)}, SMALL)
    torch.save({"x": torch.zeros(1), "evil": NotATensor()}, src / "weights.pt")
    with pytest.raises(OfficialCheckpointError, match="refused to unpickle"):
        read_weights(src / "weights.pt")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["encoder"].update(size="huge"), "unknown ViT size 'huge'"),
        (lambda c: c["predictor"].pop("depth"), "'predictor.depth': missing"),
        (lambda c: c["predictor"].update(depth="6"), "'predictor.depth': expected int"),
        (lambda c: c["action_encoder"].update(input_dim=11), "not a multiple"),
        (lambda c: c["pred_proj"].update(hidden_dim=7), "'pred_proj.hidden_dim' is 7"),
    ],
)
def test_bad_config_names_the_field(tmp_path, edit, message):
    cfg = official_config(SMALL)
    edit(cfg)
    with pytest.raises(OfficialCheckpointError, match=message):
        model_config_from_official(cfg, action_dim=2)


def test_import_refuses_an_existing_run_and_a_file_without_env(tmp_path):
    src = write_official(tmp_path / "official", random_official(SMALL), SMALL)
    data = write_data(tmp_path / "data.h5")
    with pytest.raises(OfficialCheckpointError, match="pass --env"):
        import_official(src, tmp_path / "run", data)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        import_official(src, tmp_path / "run", data, env="tworoom")
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"
    assert no_leftovers(tmp_path)


def test_export_refuses_a_model_the_official_code_cannot_build(tmp_path):
    cfg = ModelConfig(enc_dim=64, embed_dim=64)
    with pytest.raises(OfficialCheckpointError, match="no official ViT size"):
        official_config(cfg)


def test_cli_import_and_export(tmp_path):
    src = write_official(tmp_path / "official", random_official(SMALL), SMALL)
    data = write_data(tmp_path / "data.h5")
    result = runner.invoke(
        app,
        [
            "import-checkpoint",
            str(src),
            "--out",
            str(tmp_path / "run"),
            "--data",
            str(data),
            "--env",
            "tworoom",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "frameskip 5" in result.output
    result = runner.invoke(
        app, ["export-checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "back")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "back" / "weights.pt").is_file()
    result = runner.invoke(
        app, ["import-checkpoint", str(src), "--out", str(tmp_path / "r2"), "--data", str(data)]
    )
    assert result.exit_code == 2
    assert "pass --env" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_import_from_a_hub_repository_in_the_cache(tmp_path, monkeypatch):
    from conftest import add_to_cache
    from huggingface_hub import constants

    src = write_official(tmp_path / "official", random_official(SMALL), SMALL)
    data = write_data(tmp_path / "data.h5")
    files = {name: src / name for name in ("weights.pt", "config.json")}
    add_to_cache(tmp_path / "hub", "acme/lewm-toy", "model", files)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    args = ["import-checkpoint", "hf://acme/lewm-toy", "--data", str(data), "--env", "tworoom"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    import_official(src, tmp_path / "local", data, env="tworoom")
    hub_run, local = load_checkpoint(tmp_path / "run"), load_checkpoint(tmp_path / "local")
    for (k, a), (_, b) in zip(hub_run.model.state_dict().items(),
                              local.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    missing = runner.invoke(app, ["import-checkpoint", "hf://acme/absent", "--data", str(data),
                                  "--env", "tworoom", "--out", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "HF_HUB_OFFLINE" in missing.output
    assert not (tmp_path / "none").exists()
