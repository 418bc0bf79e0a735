"""Training throughput (frames/s) of a full step — forward, backward, AdamW — per preset.

Not a test: prints figures and writes JSON. Synthetic uint8 clips, so no dataset needed.
    python benchmarks/train_speed.py --presets tiny paper --precision bf16 fp32
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from common import preset_parser, write_rows

from lewm.config import preset
from lewm.device import resolve_device
from lewm.model import LeWM

DEFAULT_BATCH = {"tiny": 64, "paper": 16}


def step_seconds(name: str, batch: int, precision: str, steps: int, device: torch.device) -> float:
    cfg = preset(name).model
    model = LeWM(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    size = cfg.image_size
    pixels = torch.randint(0, 256, (batch, cfg.num_steps, 3, size, size), generator=gen,
                           dtype=torch.uint8).to(device)
    blocks = torch.randn(batch, cfg.num_steps, cfg.block_dim, generator=gen).to(device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    )
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with autocast:
            loss = model.loss(pixels, blocks)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = preset_parser(__doc__, "train_speed")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    rows = []
    for name in args.presets:
        batch = DEFAULT_BATCH.get(name, 16)
        frames = batch * preset(name).model.num_steps
        for precision in args.precision:
            seconds = step_seconds(name, batch, precision, args.steps, device)
            rows.append({"preset": name, "precision": precision, "batch": batch,
                         "frames_per_step": frames, "seconds_per_step": seconds,
                         "frames_per_second": frames / seconds, "device": str(device),
                         "threads": torch.get_num_threads()})
            print(f"{name:6s} {precision:5s} batch {batch:4d} x {frames // batch} frames: "
                  f"{seconds:.3f} s/step, {frames / seconds:8.1f} frames/s")
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
