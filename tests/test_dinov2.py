"""The DINO-WM baseline's DINOv2 encoder against Hugging Face ``Dinov2Model`` (BASELINES.md §5).

Random HF weights (seed 0, with LayerNorm, LayerScale, bias and mask-token values made
non-trivial so every renamed tensor matters) are written in both published formats and
loaded into :class:`DINOv2`; its patch tokens must equal HF's ``last_hidden_state[:, 1:]``.

Interpolation: transformers ≥ 4.47 resamples the position embedding with ``size=(h, w)``, the
path :class:`DINOv2` implements (and the paper's code used). Older versions (4.44.2 checked)
use torch hub's ``scale_factor=(h + 0.1)/37`` instead, so comparisons at a resolution other
than the pretraining one are skipped there. The pinned version (4.57.1) takes the size path.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lewm.baselines.dinov2 import DINOv2, DINOv2WeightsError, hf_to_hub, load_dinov2_weights

transformers = pytest.importorskip("transformers")
from packaging.version import Version  # noqa: E402  (transformers brings packaging)

SIZE_PATH = Version(transformers.__version__) >= Version("4.47")
needs_size_path = pytest.mark.skipif(
    not SIZE_PATH,
    reason=f"transformers {transformers.__version__} interpolates with scale_factor "
    "(h + 0.1)/37, not size=(h, w); DINOv2 follows ≥ 4.47",
)

TOL = 1e-5
# A narrow, shallow model at the real 518 px pretraining grid (37×37): fast on two cores.
SMALL = dict(dim=64, depth=2, heads=2, mlp=128, patch_size=14, pretrain_size=518)
VITS14 = dict(dim=384, depth=12, heads=6, mlp=1536, patch_size=14, pretrain_size=518)


def make_hf(arch: dict) -> torch.nn.Module:
    config = transformers.Dinov2Config(
        hidden_size=arch["dim"],
        num_hidden_layers=arch["depth"],
        num_attention_heads=arch["heads"],
        mlp_ratio=arch["mlp"] / arch["dim"],  # Dinov2Config ignores intermediate_size
        patch_size=arch["patch_size"],
        image_size=arch["pretrain_size"],
    )
    torch.manual_seed(0)
    model = transformers.Dinov2Model(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lambda1") or re.search(r"norm\d?\.weight$", name):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif name.endswith("bias") or name.endswith("mask_token"):
                param.copy_(0.1 * torch.randn_like(param))
    return model


def to_hub(hf_state: dict) -> dict:
    """HF names → torch-hub names, written independently of the code under test."""
    top = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    block = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention.output.dense": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    out = {}
    for key, value in hf_state.items():
        if key in top:
            out[top[key]] = value
            continue
        i, rest = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", key).groups()
        if rest.startswith("attention.attention."):
            kind = rest.rsplit(".", 1)[1]
            if rest.startswith("attention.attention.query."):
                parts = [hf_state[f"encoder.layer.{i}.attention.attention.{p}.{kind}"]
                         for p in ("query", "key", "value")]
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts)
        elif rest == "layer_scale1.lambda1":
            out[f"blocks.{i}.ls1.gamma"] = value
        elif rest == "layer_scale2.lambda1":
            out[f"blocks.{i}.ls2.gamma"] = value
        else:
            module, kind = rest.rsplit(".", 1)
            out[f"blocks.{i}.{block[module]}.{kind}"] = value
    return out


def write_both(hf: torch.nn.Module, folder: Path) -> dict[str, Path]:
    state = {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    torch.save(to_hub(state), folder / "dinov2_pretrain.pth")
    return {"hf": folder / "model.safetensors", "hub": folder / "dinov2_pretrain.pth"}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, dict[str, Path]]:
    hf = make_hf(SMALL)
    return hf, write_both(hf, tmp_path_factory.mktemp("dinov2_small"))


def images(n: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(1))


def max_diff(ours: DINOv2, hf: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        want = hf(pixel_values=x).last_hidden_state[:, 1:]
        got = ours(x)
    assert got.shape == want.shape
    return (got - want).abs().max().item()


def loaded(path: Path, arch: dict) -> DINOv2:
    model = DINOv2(**arch).eval()
    load_dinov2_weights(model, path)
    return model


@pytest.mark.parametrize("fmt", ["hub", "hf"])
def test_matches_hf_at_pretrain_resolution(small, fmt: str) -> None:
    hf, files = small
    assert max_diff(loaded(files[fmt], SMALL), hf, images(2, 518, 518)) <= TOL


@needs_size_path
@pytest.mark.parametrize("fmt", ["hub", "hf"])
@pytest.mark.parametrize("size", [(224, 224), (224, 168)])
def test_matches_hf_with_interpolated_positions(small, fmt: str, size: tuple[int, int]) -> None:
    hf, files = small
    model = DINOv2(**SMALL).eval()
    with torch.no_grad():
        model(images(1, *size))  # a forward before loading must not leave anything stale
    load_dinov2_weights(model, files[fmt])
    assert max_diff(model, hf, images(2, *size)) <= TOL


@needs_size_path
def test_matches_hf_vits14_at_224(tmp_path: Path) -> None:
    """True ViT-S/14 dims, 518 px pretraining grid resampled to 16×16, both formats."""
    hf = make_hf(VITS14)
    files = write_both(hf, tmp_path)
    model = DINOv2(**VITS14).eval()
    x = images(1, 224, 224)
    for path in files.values():
        load_dinov2_weights(model, path)
        assert max_diff(model, hf, x) <= TOL
        model.blocks[5].ls1.gamma.data.zero_()  # the next load must overwrite it again


def test_interpolation_skipped_on_pretrain_grid() -> None:
    model = DINOv2(**SMALL)
    assert model.position_embedding(37, 37) is model.pos_embed
    assert model.position_embedding(16, 16).shape == (1, 1 + 256, 64)


def test_snapshot_folder_and_dinov2_prefix_load(small, tmp_path: Path) -> None:
    hf, files = small
    want = to_hub(load_file(str(files["hf"])))
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(files["hf"].read_bytes())
    prefixed = tmp_path / "prefixed.safetensors"
    save_file({f"dinov2.{k}": v for k, v in load_file(str(files["hf"])).items()}, str(prefixed))
    # HF's pytorch_model.bin: HF key names in a torch pickle.
    hf_bin = tmp_path / "pytorch_model.bin"
    torch.save(load_file(str(files["hf"])), hf_bin)
    for path in (snapshot, prefixed, hf_bin):
        state = loaded(path, SMALL).state_dict()
        assert state.keys() == want.keys()
        for key in want:
            assert torch.equal(state[key], want[key]), (path, key)


def test_hf_to_hub_fuses_qkv_in_query_key_value_order() -> None:
    hf = {f"encoder.layer.3.attention.attention.{p}.bias": torch.full((2,), float(j))
          for j, p in enumerate(("query", "key", "value"))}
    hf["layernorm.weight"] = torch.ones(2)
    out = hf_to_hub(hf)
    assert out.keys() == {"blocks.3.attn.qkv.bias", "norm.weight"}
    assert out["blocks.3.attn.qkv.bias"].tolist() == [0, 0, 1, 1, 2, 2]


def test_default_is_vits14_with_22_056_576_parameters() -> None:
    model = DINOv2()
    assert sum(p.numel() for p in model.parameters()) == 22_056_576
    assert len(model.state_dict()) == 175
    assert model.pos_embed.shape == (1, 1370, 384)
    assert model.state_dict()["blocks.11.attn.qkv.weight"].shape == (1152, 384)


# ---------------------------------------------------------------------------------------
# Bad input: one line naming the file, and the model untouched.


def refused(path: Path, *patterns: str) -> str:
    model = DINOv2(**SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DINOv2WeightsError) as info:
        load_dinov2_weights(model, path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for pattern in patterns:
        assert pattern in message, message
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    return message


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    refused(tmp_path / "nope.pth", "no such file")
    refused(tmp_path, "no model.safetensors")


def test_text_file_is_neither_format(tmp_path: Path) -> None:
    for name in ("weights.pth", "model.safetensors"):
        path = tmp_path / name
        path.write_text("this is not a checkpoint\n")
        refused(path, "neither")


def test_missing_and_unexpected_keys_name_the_first(small, tmp_path: Path) -> None:
    state = torch.load(small[1]["hub"], weights_only=True)
    del state["norm.bias"], state["blocks.1.ls2.gamma"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    refused(path, "missing key blocks.1.ls2.gamma and 1 more")

    hf = load_file(str(small[1]["hf"]))
    del hf["encoder.layer.0.attention.attention.value.weight"]
    hf["pooler.weight"] = torch.zeros(2)
    path = tmp_path / "missing.safetensors"
    save_file(hf, str(path))
    refused(path, "missing key encoder.layer.0.attention.attention.value.weight",
            "unexpected key pooler.weight")


def test_wrong_shape_names_key_and_both_shapes(small, tmp_path: Path) -> None:
    state = torch.load(small[1]["hub"], weights_only=True)
    state["blocks.0.attn.qkv.weight"] = torch.zeros(192, 63)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    refused(path, "blocks.0.attn.qkv.weight", "(192, 63)", "expected (192, 64)")

    hf = load_file(str(small[1]["hf"]))
    hf["encoder.layer.1.attention.attention.key.bias"] = torch.zeros(65)
    path = tmp_path / "shape.safetensors"
    save_file(hf, str(path))
    refused(path, "encoder.layer.1.attention.attention.key.bias", "(65,)", "expected (64,)")


def test_non_finite_weights_refused(small, tmp_path: Path) -> None:
    state = torch.load(small[1]["hub"], weights_only=True)
    state["blocks.1.mlp.fc2.bias"][3] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    refused(path, "blocks.1.mlp.fc2.bias", "NaN")


def test_pickle_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"cls_token": Payload()}, protocol=2))
    refused(path, "non-tensor")
    assert not marker.exists()


def test_non_state_dict_pickle_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    refused(path, "not a plain state dict")
