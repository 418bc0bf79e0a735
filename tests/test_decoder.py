"""The pixel decoders: the paper's architecture and ours, that they learn, their file, the
moving-pixel error, `lewm decoder`."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DECODER_TRAIN as TRAIN
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from lewm.analysis.decoder import (
    FIGURES,
    GIF_FOLDER,
    WEIGHTS,
    _errors,
    fit_decoder,
    imagine,
    load_decoder,
    reconstruct,
    save_decoder,
    train_decoder,
)
from lewm.analysis.decoder_nets import (
    ConvDecoder,
    CrossAttentionDecoder,
    build_decoder,
    unpatchify,
)
from lewm.analysis.embed import action_blocks
from lewm.checkpoint import load_checkpoint
from lewm.cli import app
from lewm.config import resolve
from lewm.data import open_store, pixels_tensor
from lewm.data.clips import frame_rows, heldout_episodes

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One CPU thread: these small models gain nothing from a second, and on a machine busy
    with other jobs the threads' waiting for each other made training ~15x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_configuration_has_the_reference_parameter_count() -> None:
    """BASELINES.md §6: cls_dim 192, 224 px, 16-px patches → 2,667,264 parameters."""
    decoder = CrossAttentionDecoder(192, 224, 16)
    assert decoder.grid**2 == 196
    assert _params(decoder) == 2_667_264


@pytest.mark.parametrize(("size", "patch", "queries"), [(64, 8, 64), (224, 16, 196)])
def test_output_is_a_batch_of_frames(size: int, patch: int, queries: int) -> None:
    decoder = CrossAttentionDecoder(32, size)  # the patch follows the frame size by default
    assert (decoder.patch_size, decoder.queries.shape[1]) == (patch, queries)
    assert decoder(torch.randn(2, 32)).shape == (2, 3, size, size)
    assert decoder(torch.randn(2, 4, 32)).shape == (2, 4, 3, size, size)
    with pytest.raises(ValueError, match="embeddings"):
        decoder(torch.randn(2, 31))


@pytest.mark.parametrize(("size", "grid", "params"), [(64, 8, 1_154_307), (224, 14, 3_334_851)])
def test_conv_decoder_upsamples_a_coarse_grid(size: int, grid: int, params: int) -> None:
    """The grid is the frame halved while it stays >= 8 px; the counts pin the layout."""
    decoder = ConvDecoder(128, size)
    assert decoder.grid == grid and _params(decoder) == params
    assert decoder(torch.randn(2, 128)).shape == (2, 3, size, size)
    assert decoder(torch.randn(2, 4, 128)).shape == (2, 4, 3, size, size)
    with pytest.raises(ValueError, match="embeddings"):
        decoder(torch.randn(2, 31))


def test_build_decoder_refuses_unknown_or_mismatched_options() -> None:
    assert isinstance(build_decoder("conv", 32, 64), ConvDecoder)
    assert build_decoder("cross", 32, 64, 16).patch_size == 16
    with pytest.raises(ValueError, match=r"arch 'unet': expected one of cross, conv"):
        build_decoder("unet", 32, 64)
    with pytest.raises(ValueError, match=r"--patch-size applies to the cross-attention"):
        build_decoder("conv", 32, 64, 8)
    with pytest.raises(ValueError, match="multiple of 8"):
        ConvDecoder(32, 64, width=12)


def test_moving_pixel_error_against_a_known_case() -> None:
    """One pixel of one 4x4 frame lights up (red, 255) over a black mean frame: a decoder that
    paints the mean frame errs by 1 in one of 3 channels there, 1/48 over the whole frame
    and 1/3 over the moving pixels; a perfect one errs by 0 on both."""
    frames = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    frames[0, 0, 2, 1] = 255
    mean_frame = torch.zeros(3, 4, 4, dtype=torch.float64)
    z = torch.zeros(1, 8)
    blank = _errors(lambda z: torch.zeros(z.shape[0], 3, 4, 4), z, frames, mean_frame)
    assert blank == pytest.approx((1 / 48, 1 / 3, 1 / 16))  # one pixel of 16 moves
    assert _errors(lambda z: frames.double() / 255, z, frames, mean_frame)[:2] == (0.0, 0.0)
    total, moving, share = _errors(lambda z: frames.double() / 255, z, frames * 0, mean_frame)
    assert total == pytest.approx(1 / 48) and np.isnan(moving)  # nothing moves
    assert share == 0.0


def test_patches_land_where_their_query_is() -> None:
    """Patch k fills grid cell (k // grid, k % grid), row-major inside, colour innermost."""
    g, p = 3, 2
    values = torch.arange(g * g * p * p * 3, dtype=torch.float32).reshape(1, g * g, p * p * 3)
    image = unpatchify(values, p)[0]
    assert image.shape == (3, g * p, g * p)
    for k in range(g * g):
        row, col = divmod(k, g)
        cell = image[:, row * p : (row + 1) * p, col * p : (col + 1) * p]
        assert torch.equal(cell.permute(1, 2, 0).reshape(-1), values[0, k])


@pytest.mark.parametrize("arch", ["cross", "conv"])
def test_decoder_overfits_a_tiny_set(arch: str) -> None:
    """16 distinct frames (a colour with an inverted square) behind 16 fixed embeddings:
    200 steps of the training recipe cut the MSE >= 10x and beat the mean frame >= 2x (cross
    ~30x and ~3x measured), which a decoder that ignored its input could not. Synthetic
    frames, because TwoRoom frames differ only in a few pixels: the mean frame is already
    within 0.002 of each."""
    g = torch.Generator().manual_seed(0)
    n, size = 16, 32
    frames = torch.randint(0, 256, (n, 3, 1, 1), generator=g, dtype=torch.uint8)
    frames = frames.expand(n, 3, size, size).clone()
    for i in range(n):
        r, c = torch.randint(0, size - 8, (2,), generator=g).tolist()
        frames[i, :, r : r + 8, c : c + 8] = 255 - frames[i, :, r : r + 8, c : c + 8]
    z = torch.randn(n, 32, generator=g)
    torch.manual_seed(0)
    decoder = (CrossAttentionDecoder(32, size, 8, width=64, heads=4, mlp=256) if arch == "cross"
               else ConvDecoder(32, size, width=64))
    target = frames.float() / 255

    def mse() -> float:
        with torch.no_grad():
            return float(((decoder(z) - target) ** 2).mean())

    before = mse()
    fit_decoder(decoder, z, frames, steps=200, batch_size=n, lr=1e-3, generator=g)
    after = mse()
    mean_frame = float(((target - target.mean(0)) ** 2).mean())
    assert after * 10 <= before, (before, after)
    assert after * 2 <= mean_frame, (mean_frame, after)


def _run_with_config(small_run: Path, folder: Path) -> Path:
    """A run folder holding only the small run's config: all that a decoder file is checked
    against."""
    folder.mkdir()
    shutil.copy(small_run / "config.json", folder / "config.json")
    return folder


@pytest.mark.parametrize("arch", ["cross", "conv"])
def test_save_load_round_trip_gives_identical_outputs(
    small_run: Path, tmp_path: Path, arch: str
) -> None:
    run = _run_with_config(small_run, tmp_path / "run")
    torch.manual_seed(1)
    decoder = (CrossAttentionDecoder(32, 64, width=64, depth=2, heads=4, mlp=128)
               if arch == "cross" else ConvDecoder(32, 64, width=32)).eval()
    save_decoder(run, decoder, seed=1, steps=0)
    loaded = load_decoder(run)
    assert type(loaded) is type(decoder) and loaded.hparams() == decoder.hparams()
    z = torch.randn(5, 32)
    with torch.no_grad():
        assert torch.equal(loaded(z), decoder(z))
    assert np.array_equal(reconstruct(loaded, z), reconstruct(decoder, z))


@pytest.mark.parametrize(("embed_dim", "size", "field"), [(16, 64, "embed_dim"),
                                                          (32, 32, "image_size")])
def test_a_decoder_for_another_model_is_refused(
    small_run: Path, tmp_path: Path, embed_dim: int, size: int, field: str
) -> None:
    run = _run_with_config(small_run, tmp_path / "run")
    decoder = CrossAttentionDecoder(embed_dim, size, width=32, heads=4, mlp=64)
    save_decoder(run, decoder, seed=0, steps=0)
    with pytest.raises(ValueError, match=rf"{WEIGHTS}: {field}=") as info:
        load_decoder(run)
    assert "\n" not in str(info.value)


def _rewrite_metadata(path: Path, **changes: str | None) -> None:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    metadata = {k: v for k, v in {**metadata, **changes}.items() if v is not None}
    save_file(load_file(str(path)), str(path), metadata=metadata)


def test_a_file_from_before_the_conv_decoder_loads_as_cross_attention(
    small_run: Path, tmp_path: Path
) -> None:
    """Decoder files written before ``arch`` was recorded are cross-attention ones; an arch
    this version does not know is refused by name."""
    run = _run_with_config(small_run, tmp_path / "run")
    save_decoder(run, CrossAttentionDecoder(32, 64, width=32, heads=4, mlp=64), seed=0, steps=0)
    _rewrite_metadata(run / WEIGHTS, arch=None)
    assert isinstance(load_decoder(run), CrossAttentionDecoder)
    _rewrite_metadata(run / WEIGHTS, arch="unet")
    with pytest.raises(ValueError, match=rf"{WEIGHTS}: metadata field arch: 'unet'"):
        load_decoder(run)


def test_a_missing_or_foreign_decoder_file_is_refused(small_run: Path, tmp_path: Path) -> None:
    run = _run_with_config(small_run, tmp_path / "run")
    with pytest.raises(ValueError, match=rf"{WEIGHTS}: no decoder here"):
        load_decoder(run)
    shutil.copy(small_run / "model.safetensors", run / WEIGHTS)
    with pytest.raises(ValueError, match="not a lewm pixel decoder"):
        load_decoder(run)


def test_a_model_without_one_embedding_per_frame_is_refused(tmp_path: Path) -> None:
    """DINO-WM's latent is a grid of patch tokens: nothing for this decoder to read."""
    run = tmp_path / "run"
    run.mkdir()
    resolve("tiny", ["model.kind=dinowm"], {}).save(run / "config.json")
    save_decoder(run, CrossAttentionDecoder(32, 64, width=32, heads=4, mlp=64), seed=0, steps=0)
    with pytest.raises(ValueError, match=r"config.json: model.kind=dinowm has no model.embed_dim"):
        load_decoder(run)


def test_train_decoder_writes_weights_and_figures(decoded_run: tuple[Path, dict]) -> None:
    run, figures = decoded_run
    assert (run / WEIGHTS).is_file()
    assert json.loads((run / FIGURES).read_text()) == figures
    assert figures["heldout"] == "validation episodes"
    assert figures["train_frames"] > 0 and figures["heldout_frames"] > 0
    for key in ("before", "after", "mean_frame"):
        assert math.isfinite(figures["mse"][key]) and figures["mse"][key] > 0
        assert figures["psnr_db"][key] == pytest.approx(10 * math.log10(1 / figures["mse"][key]))
    # Three steps of Adam already move a freshly initialised decoder (~1 MSE) a long way.
    assert figures["mse"]["after"] < figures["mse"]["before"]
    assert figures["arch"] == "conv" and isinstance(load_decoder(run), ConvDecoder)
    moving = figures["moving_pixels"]
    assert 0 < moving["fraction"] < 1 and moving["threshold"] == 0.1
    assert all(math.isfinite(moving["mse"][key]) for key in ("before", "after"))
    # Where the frames move, the mean frame is furthest off: that is the point of the column.
    assert moving["mse"]["mean_frame"] > 10 * figures["mse"]["mean_frame"]


def test_imagine_decodes_the_open_loop_rollout(decoded_run: tuple[Path, dict]) -> None:
    run, _ = decoded_run
    ckpt, decoder = load_checkpoint(run), load_decoder(run)
    with open_store(ckpt.config.data.path, cache="none") as store:
        episode = int(heldout_episodes(ckpt.config, store)[0])
        rows = frame_rows(store, episode, ckpt.config.model.frameskip)
        frames = store.read("pixels", rows)
        blocks = action_blocks(store, rows, ckpt.config.model.frameskip, ckpt.normalizer)
    imagined = imagine(ckpt, decoder, frames, blocks)
    assert imagined.shape == (rows.size - 1, 64, 64, 3) and imagined.dtype == np.uint8
    with torch.inference_mode():
        z0 = ckpt.model.encode(pixels_tensor(frames[:1]))
        first = ckpt.model.rollout(z0[None], torch.from_numpy(blocks[None, :1]))[0, 0]
    assert np.array_equal(imagined[0], reconstruct(decoder, first))
    with pytest.raises(ValueError, match="action blocks"):
        imagine(ckpt, decoder, frames, blocks[1:])


def test_cli_trains_the_same_decoder_and_writes_gifs(
    decoded_run: tuple[Path, dict], small_run: Path, tmp_path: Path
) -> None:
    """Same seed, same weights (in another process path: the command); a new seed differs."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    result = runner.invoke(app, [
        "decoder", str(run), "--steps", str(TRAIN["steps"]), "--batch-size",
        str(TRAIN["batch_size"]), "--seed", "0", "--device", "cpu", "--no-progress",
        "--imagine-episodes", "2",
    ])
    assert result.exit_code == 0, result.output
    assert "mean training frame" in result.output
    reference = load_file(str(decoded_run[0] / WEIGHTS))
    weights = load_file(str(run / WEIGHTS))
    assert all(torch.equal(reference[k], weights[k]) for k in reference)
    ckpt = load_checkpoint(run)
    with open_store(ckpt.config.data.path, cache="none") as store:
        expected = min(2, heldout_episodes(ckpt.config, store).size)
    assert len(list((run / GIF_FOLDER).glob("episode_*.gif"))) == expected

    train_decoder(run, **{**TRAIN, "seed": 1}, progress=False)
    other = load_file(str(run / WEIGHTS))
    assert not all(torch.equal(reference[k], other[k]) for k in reference)


def test_cli_trains_the_papers_decoder_on_request(small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    args = ["decoder", str(run), "--steps", "1", "--batch-size", "4", "--device", "cpu",
            "--no-progress", "--imagine-episodes", "0"]
    result = runner.invoke(app, [*args, "--arch", "conv", "--patch-size", "8"])
    assert result.exit_code == 2 and "--patch-size applies to the cross-attention" in result.output
    assert not (run / WEIGHTS).exists()
    result = runner.invoke(app, [*args, "--arch", "cross", "--patch-size", "16"])
    assert result.exit_code == 0, result.output
    assert "cross pixel decoder" in result.output
    decoder = load_decoder(run)
    assert isinstance(decoder, CrossAttentionDecoder) and decoder.patch_size == 16


def test_cli_refuses_a_folder_without_a_run(tmp_path: Path) -> None:
    result = runner.invoke(app, ["decoder", str(tmp_path / "nothing"), "--no-progress"])
    assert result.exit_code == 2
    assert "no such run folder" in result.output
