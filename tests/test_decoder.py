"""The pixel decoder: the paper's architecture, that it learns, its file, `lewm decoder`."""

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
from safetensors.torch import load_file
from typer.testing import CliRunner

from lewm.analysis.decoder import (
    FIGURES,
    GIF_FOLDER,
    WEIGHTS,
    PixelDecoder,
    fit_decoder,
    imagine,
    load_decoder,
    reconstruct,
    save_decoder,
    train_decoder,
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
    decoder = PixelDecoder(192, 224, 16)
    assert decoder.grid**2 == 196
    assert _params(decoder) == 2_667_264


@pytest.mark.parametrize(("size", "patch", "queries"), [(64, 8, 64), (224, 16, 196)])
def test_output_is_a_batch_of_frames(size: int, patch: int, queries: int) -> None:
    decoder = PixelDecoder(32, size)  # the patch follows the frame size by default
    assert (decoder.patch_size, decoder.queries.shape[1]) == (patch, queries)
    assert decoder(torch.randn(2, 32)).shape == (2, 3, size, size)
    assert decoder(torch.randn(2, 4, 32)).shape == (2, 4, 3, size, size)
    with pytest.raises(ValueError, match="embeddings"):
        decoder(torch.randn(2, 31))


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


def test_decoder_overfits_a_tiny_set() -> None:
    """16 distinct frames (a colour with an inverted square) behind 16 fixed embeddings:
    200 steps of the training recipe cut the MSE ~30x (measured) and beat the mean frame
    ~3x, which a decoder that ignored its input could not. Synthetic frames, because TwoRoom
    frames differ only in a few pixels: the mean frame is already within 0.002 of each."""
    g = torch.Generator().manual_seed(0)
    n, size = 16, 32
    frames = torch.randint(0, 256, (n, 3, 1, 1), generator=g, dtype=torch.uint8)
    frames = frames.expand(n, 3, size, size).clone()
    for i in range(n):
        r, c = torch.randint(0, size - 8, (2,), generator=g).tolist()
        frames[i, :, r : r + 8, c : c + 8] = 255 - frames[i, :, r : r + 8, c : c + 8]
    z = torch.randn(n, 32, generator=g)
    torch.manual_seed(0)
    decoder = PixelDecoder(32, size, 8, width=64, heads=4, mlp=256)
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


def test_save_load_round_trip_gives_identical_outputs(small_run: Path, tmp_path: Path) -> None:
    run = _run_with_config(small_run, tmp_path / "run")
    torch.manual_seed(1)
    decoder = PixelDecoder(32, 64, width=64, depth=2, heads=4, mlp=128).eval()
    save_decoder(run, decoder, seed=1, steps=0)
    loaded = load_decoder(run)
    assert loaded.hparams() == decoder.hparams()
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
    save_decoder(run, PixelDecoder(embed_dim, size, width=32, heads=4, mlp=64), seed=0, steps=0)
    with pytest.raises(ValueError, match=rf"{WEIGHTS}: {field}=") as info:
        load_decoder(run)
    assert "\n" not in str(info.value)


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
    save_decoder(run, PixelDecoder(32, 64, width=32, heads=4, mlp=64), seed=0, steps=0)
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
    assert load_decoder(run).hparams()["patch_size"] == 8


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
    assert not torch.equal(reference["queries"], other["queries"])


def test_cli_refuses_a_folder_without_a_run(tmp_path: Path) -> None:
    result = runner.invoke(app, ["decoder", str(tmp_path / "nothing"), "--no-progress"])
    assert result.exit_code == 2
    assert "no such run folder" in result.output
