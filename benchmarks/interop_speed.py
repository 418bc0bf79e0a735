"""Interop figures: official checkpoint import/export time, agreement with Hugging Face's ViT,
and clip reads from an official-layout file vs lewm's own layout.

- import/export: a paper-size (18M-parameter) checkpoint in the official layout, random
  weights, median of --repeats runs each (the normalizer is fitted from a tiny data file).
- max abs difference: lewm's encoder CLS token (and projected embedding) against
  transformers' ``ViTModel`` (4.x, the official config) on --images random 224 px frames.
- clip throughput: the same TwoRoom episodes (224 px) stored by ``lewm collect`` (gzip 1,
  one frame per chunk) and in the older official writer's layout (Blosc lz4 level 5 with
  byte shuffle, (100, H, W, C) chunks, ``ep_idx``); random training clips (4 frames,
  frameskip 5) read through ``ClipDataset`` with pixels left on disk.

    .venv/bin/python benchmarks/interop_speed.py [--episodes 12] [--clips 300] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import transformers

from lewm.checkpoint import load_checkpoint
from lewm.config import ModelConfig
from lewm.data import ClipDataset, Normalizer, collect, open_store
from lewm.interop import (
    export_official,
    import_official,
    official_config,
    write_official_layout,
)
from lewm.interop.official import official_shapes
from lewm.model.lewm import IMAGENET_MEAN, IMAGENET_STD


def official_checkpoint(folder: Path) -> transformers.ViTModel:
    """An official-layout paper checkpoint with random weights; returns its HF encoder."""
    torch.manual_seed(0)
    hf_cfg = transformers.ViTConfig(
        hidden_size=192,
        num_hidden_layers=12,
        num_attention_heads=3,
        intermediate_size=768,
        patch_size=14,
        image_size=224,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
    )
    hf = transformers.ViTModel(hf_cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in hf.parameters():  # move LayerNorms off identity so they are tested too
            p.add_(torch.randn_like(p) * 0.02)
    state = {}
    for key, shape in official_shapes(ModelConfig()).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape) + 0.5
        else:
            state[key] = torch.randn(shape) * 0.05
    state.update({f"encoder.{k}": v for k, v in hf.state_dict().items()})
    folder.mkdir()
    torch.save(state, folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps(official_config(ModelConfig())))
    return hf


def tiny_data(path: Path) -> Path:
    rng = np.random.default_rng(0)
    action = rng.normal(size=(10, 2)).astype(np.float32)
    action[-1] = np.nan
    with h5py.File(path, "w") as f:
        f["ep_len"] = np.array([10], dtype=np.int32)
        f["ep_offset"] = np.array([0], dtype=np.int64)
        f["pixels"] = np.zeros((10, 224, 224, 3), dtype=np.uint8)
        f["action"] = action
        f["step_idx"] = np.arange(10, dtype=np.int32)
        f["ep_idx"] = np.zeros(10, dtype=np.int32)
    return path


def checkpoint_figures(tmp: Path, repeats: int, images: int) -> dict[str, float]:
    hf = official_checkpoint(tmp / "official")
    data = tiny_data(tmp / "tiny.h5")
    import_s, export_s = [], []
    for i in range(repeats):
        start = time.perf_counter()
        import_official(tmp / "official", tmp / f"run{i}", data, env="tworoom")
        import_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        export_official(tmp / f"run{i}", tmp / f"back{i}")
        export_s.append(time.perf_counter() - start)
    model = load_checkpoint(tmp / "run0").model
    pixels = torch.randint(
        0,
        256,
        (images, 3, 224, 224),
        dtype=torch.uint8,
        generator=(torch.Generator().manual_seed(1)),
    )
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        x = (pixels.float() / 255 - mean) / std
        ref_cls = hf(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0]
        cls = model.encoder(x)[:, 0]
        z, ref_z = model.encode(pixels), model.projector(ref_cls)
    return {
        "import_seconds_median": statistics.median(import_s),
        "export_seconds_median": statistics.median(export_s),
        "max_abs_diff_cls_vs_hf_vit": float((cls - ref_cls).abs().max()),
        "max_abs_diff_embedding_vs_hf_vit": float((z - ref_z).abs().max()),
        "cls_abs_max": float(ref_cls.abs().max()),
    }


def to_official_layout(src: Path, out: Path) -> None:
    """Copy every column into the older official writer's chunking and compression."""
    with h5py.File(src) as f:
        write_official_layout(out, {name: ds[()] for name, ds in f.items()})


def clips_per_second(path: Path, clips: int) -> float:
    with open_store(path, cache="none") as store:
        norm = Normalizer.fit(store, ("action",))
        dataset = ClipDataset(store, np.arange(store.num_episodes), 4, 5, norm)
        order = np.random.default_rng(0).integers(0, len(dataset), clips)
        dataset[int(order[0])]
        start = time.perf_counter()
        for i in order:
            dataset[int(i)]
        return clips / (time.perf_counter() - start)


def clip_figures(tmp: Path, episodes: int, clips: int) -> dict[str, float]:
    own = collect("tworoom", episodes, tmp / "own.h5", resolution=224, seed=0, progress=False)
    official = tmp / "official.h5"
    to_official_layout(own, official)
    with open_store(own, cache="none") as store:
        rows = store.num_rows
    return {
        "rows": rows,
        "own_layout_mb": own.stat().st_size / 2**20,
        "official_layout_mb": official.stat().st_size / 2**20,
        "own_layout_clips_per_second": clips_per_second(own, clips),
        "official_layout_clips_per_second": clips_per_second(official, clips),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/interop_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        record = {
            "checkpoint": checkpoint_figures(Path(tmp), args.repeats, args.images),
            "clips": clip_figures(Path(tmp), args.episodes, args.clips),
        }
    record["settings"] = vars(args) | {"out": str(args.out)}
    record["machine"] = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
    }
    for section in ("checkpoint", "clips"):
        for name, value in record[section].items():
            print(f"{name:>36}: {value:.6g}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
