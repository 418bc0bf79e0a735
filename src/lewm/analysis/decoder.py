"""A pixel decoder for LeWM embeddings: what the model "imagines", made visible.

LeWM never reconstructs pixels, so its latents cannot be looked at directly. A decoder is
trained afterwards, with the world model frozen, to map one embedding back to its frame
(``lewm.analysis.decoder_nets``: a convolutional one by default, or the paper's cross-
attention one of BASELINES.md §6). Decoding the latents of an open-loop rollout then shows
what the predictor expects to see.

It is for looking only: the decoder plays no part in training or planning, and its held-out
error is reported beside the mean-frame baseline so that a blurry picture can be told apart
from an embedding that lost the information. Since most pixels of these scenes never change
(TwoRoom's agent is ~1% of the frame), the error is also given on the *moving* pixels, those
that differ from the mean frame: a decoder that paints only the background scores no better
there than the mean frame does.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lewm.analysis.decoder_nets import (
    ARCHITECTURES,
    ConvDecoder,
    CrossAttentionDecoder,
    PixelDecoder,
    build_decoder,
    check_arch,
)
from lewm.analysis.embed import action_blocks
from lewm.checkpoint import CONFIG, Checkpoint, first_nonfinite, load_checkpoint
from lewm.config import RunConfig
from lewm.data import EpisodeStore, open_store, pixels_tensor, split_episodes
from lewm.data.clips import frame_rows
from lewm.io import atomic_path, atomic_write_text
from lewm.model.protocol import model_device
from lewm.report.gif import save_gif, side_by_side

WEIGHTS = "decoder.safetensors"
FIGURES = "decoder.json"
GIF_FOLDER = "decoder"
FORMAT = "lewm-decoder"
# Frames are embedded (and scored) in chunks of this many, so activations stay small.
ENCODE_CHUNK = 256
# At most this many held-out frames are scored: enough for a mean to three digits.
HELDOUT_FRAMES = 2000
# A pixel is "moving" where some channel differs from the mean frame by more than this, in
# [0, 1] units: the agent, the arm, the block, but not JPEG-like shading noise.
MOVING_THRESHOLD = 0.1
# The queries learn this many times faster than the rest. With one key, every query gets
# the same attention output, ~40x larger than an N(0, 0.02) query, and each post-norm layer
# shrinks what tells the queries apart (measured on a trained TwoRoom run: their spread
# 0.007, 0.0008, 3e-5 after layers 1-3). Their gradient is then too faint for Adam at the
# base rate: after 1500 steps at 1e-3 every patch was painted alike (held-out PSNR 11.4 dB,
# the mean frame 27.1); at 30x the queries grow apart: 26.3 dB after 300 steps of 16 frames,
# 29.2 dB (the agent drawn) after 2500 steps of 32. Only the cross-attention decoder has them.
QUERY_LR_SCALE = 30.0


def to_images(x: Tensor) -> np.ndarray:
    """Decoder output (..., 3, H, W) → uint8 (..., H, W, 3), clamped to [0, 1] first."""
    pixels = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.movedim(-3, -1).cpu().numpy())


@torch.inference_mode()
def reconstruct(decoder: PixelDecoder, z: Tensor) -> np.ndarray:
    """Embeddings (..., D) → the frames the decoder paints for them, uint8 (..., H, W, 3)."""
    return to_images(decoder(z.to(next(decoder.parameters()).device).float()))


@torch.inference_mode()
def imagine(
    ckpt: Checkpoint, decoder: PixelDecoder, frames: np.ndarray, blocks: np.ndarray | Tensor
) -> np.ndarray:
    """The open-loop rollout of an episode, decoded: uint8 (N-1, H, W, 3).

    ``frames`` are the episode's real frames at model time steps, uint8 (N, H, W, 3); only
    the first is seen. ``blocks`` (N-1, block_dim) are the z-scored action blocks between
    them; frame k+1 of the rollout is imagined from frame 0 and blocks 0..k alone, so the
    pictures drift where the predictor's physics does.
    """
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"imagine takes frames (N >= 2, H, W, 3), got {frames.shape}")
    if len(blocks) != frames.shape[0] - 1:
        raise ValueError(f"{frames.shape[0]} frames need {frames.shape[0] - 1} action blocks, "
                         f"got {len(blocks)}")
    device = model_device(ckpt.model)
    z0 = ckpt.model.encode(pixels_tensor(frames[:1]).to(device))  # (1, D)
    b = torch.as_tensor(np.asarray(blocks, dtype=np.float32), device=device)
    return reconstruct(decoder, ckpt.model.rollout(z0[None], b[None])[0])


def _latent_width(cfg: RunConfig, where: str) -> int:
    """The run's embedding width; models without one vector per frame are refused."""
    width = getattr(cfg.model, "embed_dim", None)
    if width is None:
        raise ValueError(
            f"{where}: model.kind={cfg.model.kind} has no model.embed_dim; the pixel decoder "
            "reads one embedding vector per frame (LeWM, PLDM)"
        )
    return int(width)


def save_decoder(run_dir: str | Path, decoder: PixelDecoder, seed: int, steps: int) -> Path:
    """Write ``decoder.safetensors`` atomically, its architecture in the metadata; a decoder
    whose training diverged is refused rather than saved."""
    path = Path(run_dir) / WEIGHTS
    state = {k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
    bad = first_nonfinite(state)
    if bad is not None:
        raise ValueError(f"{path}: not written: tensor {bad} holds NaN or inf (try a lower --lr)")
    metadata = {"format": FORMAT, "arch": decoder.ARCH, "seed": str(seed), "steps": str(steps)}
    metadata |= {k: str(v) for k, v in decoder.hparams().items()}
    with atomic_path(path) as tmp:
        mode = tmp.stat().st_mode
        save_file(state, str(tmp), metadata=metadata)
        tmp.chmod(mode)  # safetensors leaves an owner-only file; keep the usual permissions
    return path


def _read_hparams(path: Path) -> tuple[str, dict[str, int]]:
    """The stored architecture and its sizes; files from before the conv decoder have no
    ``arch`` and are cross-attention ones."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: metadata format is {metadata.get('format')!r}, "
                         f"expected {FORMAT!r} (not a lewm pixel decoder)")
    arch = metadata.get("arch", CrossAttentionDecoder.ARCH)
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: metadata field arch: {arch!r}, expected one of "
                         f"{', '.join(ARCHITECTURES)}")
    hparams = {}
    for name in ARCHITECTURES[arch].HPARAMS:
        try:
            hparams[name] = int(metadata[name])
        except (KeyError, ValueError):
            raise ValueError(f"{path}: metadata field {name}: missing or not an integer "
                             f"({metadata.get(name)!r})") from None
    return arch, hparams


def load_decoder(run_dir: str | Path, device: str | torch.device = "cpu") -> PixelDecoder:
    """The run's trained decoder in eval mode; one that does not fit the run's model (its
    embedding width or frame size) is refused, naming the file and the field."""
    run_dir = Path(run_dir)
    path = run_dir / WEIGHTS
    if not path.is_file():
        raise ValueError(f"{path}: no decoder here; train one with `lewm decoder {run_dir}`")
    cfg = RunConfig.load(run_dir / CONFIG)
    arch, hparams = _read_hparams(path)
    expected = {"embed_dim": _latent_width(cfg, str(run_dir / CONFIG)),
                "image_size": cfg.model.image_size}
    for name, value in expected.items():
        if hparams[name] != value:
            raise ValueError(
                f"{path}: {name}={hparams[name]} but the run's model.{name} is {value}; "
                f"retrain it with `lewm decoder {run_dir}`"
            )
    try:
        decoder = ARCHITECTURES[arch](**hparams)
        decoder.load_state_dict(load_file(str(path)))
    except (RuntimeError, ValueError, SafetensorError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ValueError(f"{path}: weights do not fit the stored architecture ({reason})") from None
    return decoder.to(device).eval()


@torch.no_grad()
def _embed_rows(
    model: nn.Module, store: EpisodeStore, rows: np.ndarray, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Embeddings (N, D) on ``device`` and their frames uint8 (N, 3, H, W) on the CPU.

    Computed once: the world model is frozen, so its embedding of a frame never changes, and
    training the decoder then costs only the decoder. Plain no_grad rather than inference
    mode, since the embeddings feed a module that is being trained.
    """
    zs, frames = [], []
    for start in range(0, rows.size, ENCODE_CHUNK):
        chunk = pixels_tensor(store.read("pixels", rows[start : start + ENCODE_CHUNK]))
        zs.append(model.encode(chunk.to(device)).float())
        frames.append(chunk)
    return torch.cat(zs), torch.cat(frames)


def _rows_of(
    store: EpisodeStore, episodes: np.ndarray, limit: int, rng: np.random.Generator
) -> np.ndarray:
    """Every row of ``episodes``, or ``limit`` of them drawn at random, sorted."""
    spans = [store.episode_rows(int(e)) for e in episodes]
    rows = np.concatenate([np.arange(s.start, s.stop, dtype=np.int64) for s in spans])
    return np.sort(rng.choice(rows, size=limit, replace=False)) if rows.size > limit else rows


@torch.no_grad()
def _errors(
    predict: Callable[[Tensor], Tensor], z: Tensor, frames: Tensor, mean_frame: Tensor
) -> tuple[float, float, float]:
    """Mean squared error of ``predict(z)`` in [0, 1] units over every pixel and channel, the
    same over the moving pixels only (see ``MOVING_THRESHOLD``; NaN if there are none), and
    the share of pixels that move. In chunks, so that a few thousand frames never sit on the
    device as floats at once."""
    total = moving = count = 0.0
    for i in range(0, z.shape[0], ENCODE_CHUNK):
        target = frames[i : i + ENCODE_CHUNK].to(z.device).double() / 255
        squared = (predict(z[i : i + ENCODE_CHUNK]).double() - target) ** 2
        mask = (target - mean_frame).abs().amax(-3, keepdim=True) > MOVING_THRESHOLD
        total += float(squared.sum())
        moving += float((squared * mask).sum())
        count += float(mask.sum())
    channels = frames.shape[-3]
    return (total / frames.numel(), moving / (count * channels) if count else math.nan,
            count * channels / frames.numel())


def _mean_frame(frames: Tensor, device: torch.device) -> Tensor:
    """The average training frame (3, H, W) in [0, 1] units: the trivial baseline."""
    total = sum(frames[i : i + ENCODE_CHUNK].double().sum(0)
                for i in range(0, frames.shape[0], ENCODE_CHUNK))
    return (total / (255 * frames.shape[0])).to(device)


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of an MSE on [0, 1] pixels (inf for a perfect fit)."""
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.5f}"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not enabled,
    )


def fit_decoder(
    decoder: PixelDecoder, z: Tensor, frames: Tensor, steps: int, batch_size: int, lr: float,
    generator: torch.Generator, progress: bool = False,
) -> float:
    """Train ``decoder`` to paint uint8 ``frames`` (N, 3, H, W) from embeddings ``z`` (N, D)
    on its device; returns the last batch's loss and leaves it in eval mode.

    Adam on the pixel MSE in [0, 1] units, ``lr`` decayed to zero along a cosine, the queries
    at ``QUERY_LR_SCALE`` times ``lr``. Batches are drawn with ``generator`` only, so a seed
    fixes the whole run."""
    rest = [p for name, p in decoder.named_parameters() if name != "queries"]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if isinstance(decoder, CrossAttentionDecoder):
        groups.append({"params": [decoder.queries], "lr": lr * QUERY_LR_SCALE})
    optimizer = torch.optim.Adam(groups, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    decoder.train()
    with _progress(progress) as bar:
        task = bar.add_task("training decoder", total=steps, loss=math.nan)
        for step in range(steps):
            pick = torch.randint(z.shape[0], (batch_size,), generator=generator)
            target = frames[pick].to(z.device).float() / 255
            loss = ((decoder(z[pick.to(z.device)]) - target) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 10 == 0 or step == steps - 1:  # reading the loss waits for the GPU
                bar.update(task, completed=step + 1, loss=loss.item())
    decoder.eval()
    return loss.item()


def train_decoder(
    run_dir: str | Path,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    patch_size: int | None = None,
    max_frames: int = 10000,
    arch: str = ConvDecoder.ARCH,
) -> dict[str, Any]:
    """Train a decoder on the run's training-episode frames, save it, return its figures.

    The run's own split keeps the held-out score honest: the decoder is scored on frames of
    validation episodes, which neither it nor the world model saw (the training frames
    instead when the run has no validation episodes; the figures say which). At most
    ``max_frames`` training frames (and ``HELDOUT_FRAMES`` held-out ones) are drawn, so that
    a large dataset fits in memory. ``arch`` is conv or cross (``decoder_nets``). Weights go
    to ``decoder.safetensors``, figures to ``decoder.json``.
    """
    if steps < 1 or batch_size < 1 or max_frames < 1 or not lr > 0:
        raise ValueError(f"steps={steps}, batch_size={batch_size} and max_frames={max_frames} "
                         f"must be >= 1, lr={lr} > 0")
    run_dir, device = Path(run_dir), torch.device(device)
    check_arch(arch, patch_size)  # before the minutes of embedding frames
    ckpt = load_checkpoint(run_dir, device)
    cfg = ckpt.config
    embed_dim = _latent_width(cfg, str(run_dir / CONFIG))
    if not cfg.data.path:
        raise ValueError(f"{run_dir / CONFIG}: data.path is empty; the decoder trains on the "
                         "run's own data file")
    rng = np.random.default_rng(seed)
    with open_store(cfg.data.path, cache="none") as store:
        train_eps, val_eps = split_episodes(store.num_episodes, cfg.data.val_fraction, cfg.seed)
        heldout_eps = val_eps if val_eps.size else train_eps
        train_rows = _rows_of(store, train_eps, max_frames, rng)
        heldout_rows = _rows_of(store, heldout_eps, min(max_frames, HELDOUT_FRAMES), rng)
        model = ckpt.model.eval()
        z_train, x_train = _embed_rows(model, store, train_rows, device)
        z_val, x_val = _embed_rows(model, store, heldout_rows, device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = build_decoder(arch, embed_dim, cfg.model.image_size, patch_size)
    decoder = decoder.to(device).eval()
    mean_frame = _mean_frame(x_train, device)
    errors = {
        "before": _errors(decoder, z_val, x_val, mean_frame),
        "mean_frame": _errors(lambda z: mean_frame.expand(z.shape[0], -1, -1, -1), z_val, x_val,
                              mean_frame),
    }
    began = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    last_loss = fit_decoder(decoder, z_train, x_train, steps, batch_size, lr, generator, progress)
    errors["after"] = _errors(decoder, z_val, x_val, mean_frame)
    mse = {k: v[0] for k, v in errors.items()}
    weights = save_decoder(run_dir, decoder, seed, steps)
    figures = {
        "run": str(run_dir), "data": str(cfg.data.path),
        "heldout": "validation episodes" if val_eps.size else
                   "training episodes (the run has no validation split)",
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "train_frames": int(train_rows.size), "heldout_frames": int(heldout_rows.size),
        "arch": decoder.ARCH, "params": sum(p.numel() for p in decoder.parameters()),
        **decoder.hparams(),
        "final_train_loss": last_loss, "train_seconds": round(time.perf_counter() - began, 2),
        "mse": mse, "psnr_db": {k: psnr(v) for k, v in mse.items()},
        "moving_pixels": {
            "threshold": MOVING_THRESHOLD,
            "fraction": errors["after"][2],
            "mse": {k: v[1] for k, v in errors.items()},
        },
        "weights": str(weights),
    }
    atomic_write_text(run_dir / FIGURES, json.dumps(figures, indent=2) + "\n")
    return figures


def write_imagination_gifs(
    ckpt: Checkpoint, decoder: PixelDecoder, store: EpisodeStore, episodes: np.ndarray,
    folder: str | Path,
) -> list[Path]:
    """One GIF per episode, ``folder/episode_XXX.gif``: real | imagined | reconstructed.

    The imagined column starts at the decoded first frame and then shows the open-loop
    rollout under the episode's own actions; the reconstruction column decodes each real
    frame's embedding, so the gap between the two is the predictor's, not the decoder's.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frameskip, device = ckpt.config.model.frameskip, model_device(ckpt.model)
    paths = []
    for episode in episodes:
        rows = frame_rows(store, int(episode), frameskip)
        if rows.size < 2:
            continue  # nothing to imagine from a single frame
        frames = store.read("pixels", rows)
        blocks = action_blocks(store, rows, frameskip, ckpt.normalizer)
        with torch.inference_mode():
            recon = reconstruct(decoder, ckpt.model.encode(pixels_tensor(frames).to(device)))
        imagined = np.concatenate([recon[:1], imagine(ckpt, decoder, frames, blocks)])
        strip = [side_by_side(*t) for t in zip(frames, imagined, recon, strict=True)]
        paths.append(save_gif(strip, folder / f"episode_{int(episode):03d}.gif"))
    return paths
