"""A pixel decoder for LeWM embeddings: what the model "imagines", made visible.

LeWM never reconstructs pixels, so its latents cannot be looked at directly. This decoder is
trained afterwards, with the world model frozen, to map one embedding back to its frame
(BASELINES.md §6, the maintainer's ``CLSDecoder``): the embedding becomes a single key/value
token, one learned query per patch cross-attends to it, and a linear head paints each patch.
Decoding the latents of an open-loop rollout then shows what the predictor expects to see.

It is for looking only: the decoder plays no part in training or planning, and its held-out
error is reported beside the mean-frame baseline so that a blurry picture can be told apart
from an embedding that lost the information.
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
# The architecture fields stored in the weights' metadata, in PixelDecoder's argument order.
HPARAMS = ("embed_dim", "image_size", "patch_size", "width", "depth", "heads", "mlp")
# Frames are embedded (and scored) in chunks of this many, so activations stay small.
ENCODE_CHUNK = 256
# At most this many held-out frames are scored: enough for a mean to three digits.
HELDOUT_FRAMES = 2000
# The queries learn this many times faster than the rest. With one key, every query gets
# the same attention output, ~40x larger than an N(0, 0.02) query, and each post-norm layer
# shrinks what tells the queries apart (measured on a trained TwoRoom run: their spread
# 0.007, 0.0008, 3e-5 after layers 1-3). Their gradient is then too faint for Adam at the
# base rate: after 1500 steps at 1e-3 every patch was painted alike (held-out PSNR 11.4 dB,
# the mean frame 27.1); at 30x the queries grow apart: 26.3 dB after 300 steps of 16 frames,
# 29.2 dB (the agent drawn) after 2500 steps of 32.
QUERY_LR_SCALE = 30.0


def default_patch(image_size: int) -> int:
    """16-px patches as in the paper at 224 px; 8 px below 128 px, where a 16-px patch would
    leave a 64-px frame only 16 queries to paint a ~4-px agent with."""
    return 16 if image_size >= 128 else 8


class _CrossAttentionLayer(nn.Module):
    """Post-norm: queries attend to the latent token, then pass through an MLP."""

    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.attn_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))
        self.mlp_norm = nn.LayerNorm(width)

    def forward(self, queries: Tensor, latent: Tensor) -> Tensor:
        attended = self.attn(queries, latent, latent, need_weights=False)[0]
        queries = self.attn_norm(queries + attended)
        return self.mlp_norm(queries + self.mlp(queries))


class PixelDecoder(nn.Module):
    """Embeddings (..., embed_dim) → frames (..., 3, image_size, image_size) in [0, 1] units.

    The output is not squashed (as in the reference), so training is a plain regression;
    :func:`to_images` clamps when pixels are wanted. With a single key the attention weights
    are all 1, so every patch receives the same message; where each patch lies is known
    only to its query.
    """

    def __init__(
        self,
        embed_dim: int,
        image_size: int,
        patch_size: int | None = None,
        width: int = 256,
        depth: int = 3,
        heads: int = 8,
        mlp: int = 1024,
    ) -> None:
        super().__init__()
        patch_size = patch_size or default_patch(image_size)
        if min(embed_dim, image_size, patch_size, width, depth, heads, mlp) < 1:
            raise ValueError("decoder sizes must all be >= 1")
        if image_size % patch_size:
            raise ValueError(
                f"decoder patch_size={patch_size} does not divide image_size={image_size}"
            )
        if width % heads:
            raise ValueError(f"decoder width={width} is not a multiple of heads={heads}")
        self.embed_dim, self.image_size, self.patch_size = embed_dim, image_size, patch_size
        self.width, self.depth, self.heads, self.mlp = width, depth, heads, mlp
        self.grid = image_size // patch_size
        self.latent = nn.Sequential(nn.Linear(embed_dim, width), nn.LayerNorm(width), nn.GELU())
        self.queries = nn.Parameter(torch.randn(1, self.grid**2, width) * 0.02)
        self.layers = nn.ModuleList(_CrossAttentionLayer(width, heads, mlp) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, patch_size**2 * 3))

    def hparams(self) -> dict[str, int]:
        """The constructor's arguments: enough to rebuild this decoder from its weights."""
        return {name: int(getattr(self, name)) for name in HPARAMS}

    def forward(self, z: Tensor) -> Tensor:
        if z.shape[-1] != self.embed_dim:
            raise ValueError(
                f"decoder takes embeddings (..., {self.embed_dim}), got {tuple(z.shape)}"
            )
        lead = z.shape[:-1]
        latent = self.latent(z.reshape(-1, 1, self.embed_dim))
        q = self.queries.expand(latent.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, latent)
        return unpatchify(self.head(q), self.patch_size).reshape(
            *lead, 3, self.image_size, self.image_size
        )


def unpatchify(patches: Tensor, patch_size: int) -> Tensor:
    """(B, grid², p·p·3) → (B, 3, grid·p, grid·p): patch k fills grid cell (k // grid,
    k % grid), its values read row-major with the colour innermost, as in the reference."""
    g = math.isqrt(patches.shape[1])
    image = patches.reshape(-1, g, g, patch_size, patch_size, 3).permute(0, 5, 1, 3, 2, 4)
    return image.reshape(-1, 3, g * patch_size, g * patch_size)


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
    metadata = {"format": FORMAT, "seed": str(seed), "steps": str(steps)}
    metadata |= {k: str(v) for k, v in decoder.hparams().items()}
    with atomic_path(path) as tmp:
        mode = tmp.stat().st_mode
        save_file(state, str(tmp), metadata=metadata)
        tmp.chmod(mode)  # safetensors leaves an owner-only file; keep the usual permissions
    return path


def _read_hparams(path: Path) -> dict[str, int]:
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
    hparams = {}
    for name in HPARAMS:
        try:
            hparams[name] = int(metadata[name])
        except (KeyError, ValueError):
            raise ValueError(f"{path}: metadata field {name}: missing or not an integer "
                             f"({metadata.get(name)!r})") from None
    return hparams


def load_decoder(run_dir: str | Path, device: str | torch.device = "cpu") -> PixelDecoder:
    """The run's trained decoder in eval mode; one that does not fit the run's model (its
    embedding width or frame size) is refused, naming the file and the field."""
    run_dir = Path(run_dir)
    path = run_dir / WEIGHTS
    if not path.is_file():
        raise ValueError(f"{path}: no decoder here; train one with `lewm decoder {run_dir}`")
    cfg = RunConfig.load(run_dir / CONFIG)
    hparams = _read_hparams(path)
    expected = {"embed_dim": _latent_width(cfg, str(run_dir / CONFIG)),
                "image_size": cfg.model.image_size}
    for name, value in expected.items():
        if hparams[name] != value:
            raise ValueError(
                f"{path}: {name}={hparams[name]} but the run's model.{name} is {value}; "
                f"retrain it with `lewm decoder {run_dir}`"
            )
    try:
        decoder = PixelDecoder(**hparams)
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
def _mse(predict: Callable[[Tensor], Tensor], z: Tensor, frames: Tensor) -> float:
    """Mean squared error of ``predict(z)`` over every pixel and channel, in [0, 1] units;
    in chunks, so that a few thousand frames never sit on the device as floats at once."""
    total = 0.0
    for i in range(0, z.shape[0], ENCODE_CHUNK):
        target = frames[i : i + ENCODE_CHUNK].to(z.device).double() / 255
        total += float(((predict(z[i : i + ENCODE_CHUNK]).double() - target) ** 2).sum())
    return total / frames.numel()


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
    optimizer = torch.optim.Adam(
        [{"params": rest}, {"params": [decoder.queries], "lr": lr * QUERY_LR_SCALE}], lr=lr
    )
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
) -> dict[str, Any]:
    """Train a decoder on the run's training-episode frames, save it, return its figures.

    The run's own split keeps the held-out score honest: the decoder is scored on frames of
    validation episodes, which neither it nor the world model saw (the training frames
    instead when the run has no validation episodes; the figures say which). At most
    ``max_frames`` training frames (and ``HELDOUT_FRAMES`` held-out ones) are drawn, so that
    a large dataset fits in memory. Weights go to ``decoder.safetensors``, figures to
    ``decoder.json``.
    """
    if steps < 1 or batch_size < 1 or max_frames < 1 or not lr > 0:
        raise ValueError(f"steps={steps}, batch_size={batch_size} and max_frames={max_frames} "
                         f"must be >= 1, lr={lr} > 0")
    run_dir, device = Path(run_dir), torch.device(device)
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
        decoder = PixelDecoder(embed_dim, cfg.model.image_size, patch_size).to(device).eval()
    mean_frame = _mean_frame(x_train, device)
    mse = {
        "before": _mse(decoder, z_val, x_val),
        "mean_frame": _mse(lambda z: mean_frame.expand(z.shape[0], -1, -1, -1), z_val, x_val),
    }
    began = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    last_loss = fit_decoder(decoder, z_train, x_train, steps, batch_size, lr, generator, progress)
    mse["after"] = _mse(decoder, z_val, x_val)
    weights = save_decoder(run_dir, decoder, seed, steps)
    figures = {
        "run": str(run_dir), "data": str(cfg.data.path),
        "heldout": "validation episodes" if val_eps.size else
                   "training episodes (the run has no validation split)",
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "train_frames": int(train_rows.size), "heldout_frames": int(heldout_rows.size),
        "params": sum(p.numel() for p in decoder.parameters()), **decoder.hparams(),
        "final_train_loss": last_loss, "train_seconds": round(time.perf_counter() - began, 2),
        "mse": mse, "psnr_db": {k: psnr(v) for k, v in mse.items()}, "weights": str(weights),
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
