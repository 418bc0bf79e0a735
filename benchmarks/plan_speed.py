"""Seconds per CEM plan (PROTOCOL.md settings: 300 samples, 30 elites, 30 iterations,
horizon 5) per preset: the naive planner as the reference computes it next to lewm's.

The naive planner (written here, after le-wm's ``JEPA.get_cost``/``rollout``) encodes the
observation and the goal at every CEM iteration, re-runs the action encoder over the whole
growing action sequence and the predictor over the whole window at every autoregressive
step, and applies ``pred_proj`` to every window token. lewm's planner encodes once per plan
and uses the cached window-prefix rollout; with ``plan.compile`` that rollout also runs
through ``torch.compile`` (timed after its one-off compile, which is reported). All run the
same CEM with the same seed, so their plans can be compared. Their timed plans are taken in
turn (naive, fast, compiled, naive, ...), so that the drifting speed of a shared CPU does not
favour one of them. Also reported: FLOPs per plan of naive and fast
(``torch.utils.flop_counter``), this CPU's matmul throughput, batched planning, and
``plan.precision=bf16`` (compiled too, under ``--compile``), which is faster where bf16
matmuls are, but plans differently from float32 and so is kept apart from the exact figures.

Plans are compared, not only embeddings. The rollouts agree to float rounding (about 1e-7),
but CEM's late iterations rank candidates whose costs differ by less than that rounding can
move them: on the `tiny` model here, the compiled and the eager plans part at iteration 21
of 30, where the 30th and 31st costs were 8e-5 apart. A plan difference far above 1e-6
means such a near-tie went the other way, not that a rollout is wrong.

On CPU both run with glibc's allocator set as `lewm eval` sets it (``keep_freed_memory``).
Weights are random, with the AdaLN modulation woken up (it starts at zero) so that actions
matter; speed does not depend on the weights.
    python benchmarks/plan_speed.py --presets tiny paper

With ``--models lewm dinowm`` it instead puts world-model kinds side by side at the paper's
planning configuration (224 px frames, history 3, CEM 300 samples × 30 iterations, horizon
5; DINO-WM-style with its ViT-S/14 encoder's 256 patches per frame): seconds and FLOPs per
CEM iteration (one rollout of every candidate and its cost) and per plan (two encodings plus
30 iterations), measured in one run, taken in turn.
    python benchmarks/plan_speed.py --models lewm dinowm --samples dinowm=3 \
        --out benchmarks/results/plan_speed_models.json
A CEM iteration's work is the same for every candidate, so a kind too slow for a CPU at 300
samples can be timed and counted at ``--samples`` fewer candidates per call and scaled to
300 (stated in the output).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from common import preset_parser, write_rows
from torch.utils.flop_counter import FlopCounterMode

from lewm.config import PlanConfig, apply_overrides, preset
from lewm.data.normalize import Normalizer
from lewm.device import keep_freed_memory, resolve_device
from lewm.model import LeWM
from lewm.plan.mpc import MPCPlanner, frames_to_tensor, plan_flops
from lewm.plan.solvers import CEM
from lewm.registry import build_model


def reference_rollout(model: LeWM, z0: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """le-wm's rollout: everything recomputed at every step. z0 (S, 1, D), blocks (S, H, ·)."""
    history = model.cfg.history
    emb, act = z0, blocks[:, :1]
    for t in range(blocks.shape[1]):
        act_emb = model.action_encoder(act)
        pred = model.pred_proj(model.predictor(emb[:, -history:], act_emb[:, -history:]))
        emb = torch.cat([emb, pred[:, -1:]], dim=1)
        act = torch.cat([act, blocks[:, t + 1 : t + 2]], dim=1)
    return emb[:, 1:]


def reference_plan(model: LeWM, cfg: PlanConfig, obs: np.ndarray, goal: np.ndarray,
                   seed: int, device: torch.device) -> torch.Tensor:
    def cost(candidates: torch.Tensor) -> torch.Tensor:
        z0 = model.encode(frames_to_tensor(obs[None], device))
        zg = model.encode(frames_to_tensor(goal[None], device))[:, 0]
        samples = candidates.shape[1]
        predicted = reference_rollout(model, z0.expand(samples, -1, -1), candidates[0])
        return model.planning_cost(predicted, zg).view(1, samples)

    solver = CEM(cfg.samples, cfg.elites, cfg.iterations)
    shape = (cfg.horizon, model.cfg.block_dim)
    with torch.no_grad():
        return solver.solve(cost, shape, 1, [torch.Generator().manual_seed(seed)], device)


def timed(methods: dict[str, Callable[[], torch.Tensor]], repeats: int
          ) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Seconds of each method's ``repeats`` calls after one untimed call each, taken in turn
    (a, b, c, a, b, c, ...), so that the drift of a shared CPU's speed hits all alike."""
    out = {name: fn() for name, fn in methods.items()}
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            out[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    return seconds, out


def flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def paper_model_config(kind: str) -> tuple[object, PlanConfig]:
    """The paper-scale config of a kind and the paper's CEM (PROTOCOL.md §2)."""
    cfg = apply_overrides(preset("paper"), [f"model.kind={kind}"])
    return cfg.model, cfg.plan


def compare_models(kinds: list[str], samples: dict[str, int], repeats: int,
                   device: torch.device) -> list[dict]:
    """Seconds and FLOPs per CEM iteration and per plan of each kind, side by side."""
    entries = {}
    for kind in kinds:
        model_cfg, plan = paper_model_config(kind)
        torch.manual_seed(0)
        model = build_model(model_cfg).to(device).eval()
        size = model_cfg.image_size
        frame = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        with torch.no_grad():
            z = model.encode(frames_to_tensor(frame, device))
            goal = model.encode(frames_to_tensor(frame, device))[:, 0]
        n = samples.get(kind, plan.samples)
        # As MPCPlanner plans: the current frame is the whole context.
        blocks = torch.randn(n, plan.horizon, model_cfg.block_dim, device=device)
        ctx = z

        def iteration(model=model, ctx=ctx, blocks=blocks, goal=goal):
            with torch.no_grad():
                predicted = model.rollout(ctx, blocks)
                return model.planning_cost(predicted, goal.expand(len(blocks), -1))

        def encode(model=model, frame=frame):
            with torch.no_grad():
                return model.encode(frames_to_tensor(np.concatenate([frame, frame]), device))

        # Counted at the timed sample count and scaled: every candidate costs the same.
        counted = plan_flops(model, size, dataclasses.replace(plan, samples=n),
                             model_cfg.block_dim, device)
        counted["iteration"] = counted["iteration"] * plan.samples // n
        counted["plan"] = counted["encode"] + plan.iterations * counted["iteration"]
        entries[kind] = {"iteration": iteration, "encode": encode, "samples_timed": n,
                         "latent_dim": int(z.shape[-1]),
                         "flops": counted, "plan": plan, "cfg": model_cfg,
                         "params": model.param_counts()}
    methods = {f"{k}/iteration": e["iteration"] for k, e in entries.items()}
    methods |= {f"{k}/encode": e["encode"] for k, e in entries.items()}
    seconds, _ = timed(methods, repeats)
    rows = []
    for kind, e in entries.items():
        plan, cfg = e["plan"], e["cfg"]
        scale = plan.samples / e["samples_timed"]
        t_iter = statistics.median(seconds[f"{kind}/iteration"]) * scale
        t_enc = statistics.median(seconds[f"{kind}/encode"])
        rows.append({
            "kind": kind, "device": str(device), "threads": torch.get_num_threads(),
            "image_size": cfg.image_size, "history": cfg.history,
            "latent_dim": e["latent_dim"],
            "samples": plan.samples, "samples_timed": e["samples_timed"],
            "iterations": plan.iterations, "horizon": plan.horizon,
            "seconds_per_iteration": t_iter,
            "seconds_per_plan": t_enc + plan.iterations * t_iter,
            "gflop_per_iteration": e["flops"]["iteration"] / 1e9,
            "gflop_per_plan": e["flops"]["plan"] / 1e9,
            "parameters": e["params"],
        })
    base = rows[0]
    for row in rows:
        row["time_ratio_to_" + base["kind"]] = row["seconds_per_iteration"] / base[
            "seconds_per_iteration"]
        row["flop_ratio_to_" + base["kind"]] = row["gflop_per_iteration"] / base[
            "gflop_per_iteration"]
        print(f"{row['kind']:7s} {row['seconds_per_iteration']:9.3f} s/iteration "
              f"({row['gflop_per_iteration']:10.1f} GFLOP; timed at {row['samples_timed']} "
              f"samples, scaled to {row['samples']}) | {row['seconds_per_plan']:9.1f} s/plan "
              f"({row['gflop_per_plan']:10.1f} GFLOP) | x{row['time_ratio_to_' + base['kind']]:.1f}"
              f" time, x{row['flop_ratio_to_' + base['kind']]:.1f} FLOPs vs {base['kind']}")
    return rows


def main() -> None:
    parser = preset_parser(__doc__, "plan_speed")
    parser.add_argument("--plans", type=int, default=3, help="timed plans per method")
    parser.add_argument("--batch", type=int, default=10, help="environments per batched call")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time plan.compile (torch.compile of the rollout)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="also time plan.precision=bf16 (with plan.compile under --compile)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="world-model kinds to compare at the paper's configuration")
    parser.add_argument("--samples", nargs="+", default=[], metavar="KIND=N",
                        help="time KIND at N candidates per iteration and scale to 300")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as `lewm eval` does; naive and fast alike
    if args.models:
        samples = {k: int(v) for k, v in (item.split("=") for item in args.samples)}
        write_rows(compare_models(args.models, samples, args.plans, device), args.out)
        return
    peak = matmul_gflops(device)
    print(f"matmul throughput ({device}, {torch.get_num_threads()} threads): {peak:.1f} GFLOP/s")
    rows = []
    for name in args.presets:
        cfg = preset(name)
        torch.manual_seed(0)
        model = LeWM(cfg.model).to(device).eval()
        for layer in model.predictor.transformer.layers:
            torch.nn.init.normal_(layer.adaLN_modulation[1].weight, std=0.02)
        a = cfg.model.action_dim
        norm = Normalizer(mean={"action": np.zeros(a)}, std={"action": np.ones(a)})
        planner = MPCPlanner(model, norm, cfg.plan, cfg.model.frameskip, a, device)
        size = cfg.model.image_size
        rng = np.random.default_rng(0)
        obs, goal = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)

        def fast(batch: int = 1, obs=obs, goal=goal, planner=planner):
            return planner.plan(np.stack([obs] * batch), np.stack([goal] * batch),
                                [torch.Generator().manual_seed(0) for _ in range(batch)])[1]

        def naive(model=model, cfg=cfg, obs=obs, goal=goal):
            return reference_plan(model, cfg.plan, obs, goal, 0, device)

        methods = {"naive": naive, "fast": fast}
        if args.compile:
            compiled = MPCPlanner(model, norm, dataclasses.replace(cfg.plan, compile=True),
                                  cfg.model.frameskip, a, device)
            methods["compiled"] = lambda f=fast, c=compiled: f(planner=c)  # compiles at once
        if args.bf16:
            low = MPCPlanner(model, norm, dataclasses.replace(cfg.plan, precision="bf16",
                                                              compile=args.compile),
                             cfg.model.frameskip, a, device)
            methods["bf16"] = lambda f=fast, p=low: f(planner=p)
        seconds, plans = timed(methods, args.plans)
        naive_s, fast_s, naive_plan, fast_plan = (
            seconds["naive"], seconds["fast"], plans["naive"], plans["fast"])
        blocks = torch.randn(cfg.plan.samples, cfg.plan.horizon, cfg.model.block_dim)
        with torch.no_grad():
            z0 = model.encode(frames_to_tensor(obs[None], device))
            gap = (reference_rollout(model, z0.expand(len(blocks), -1, -1), blocks)
                   - model.rollout(z0, blocks)).abs().max().item()
        extra: dict[str, float] = {}
        if args.compile:
            compiled_plan = plans["compiled"]
            t_compiled = statistics.median(seconds["compiled"])
            extra = {
                "compiled_seconds_per_plan": t_compiled,
                "compile_seconds": compiled.compile_seconds,
                "compiled_speedup": statistics.median(naive_s) / t_compiled,
                "compiled_max_abs_plan_difference_to_naive":
                    (compiled_plan - naive_plan).abs().max().item(),
                "compiled_max_abs_plan_difference_to_fast":
                    (compiled_plan - fast_plan).abs().max().item(),
            }  # fmt: skip
        if args.bf16:
            t_low = statistics.median(seconds["bf16"])
            extra |= {
                "bf16_seconds_per_plan": t_low,
                "bf16_compile_seconds": low.compile_seconds,
                "bf16_speedup": statistics.median(naive_s) / t_low,
                "bf16_max_abs_plan_difference_to_naive":
                    (plans["bf16"] - naive_plan).abs().max().item(),
            }  # fmt: skip
        # Batched last: its tensors are ten times a single plan's.
        batch_s = timed({"batched": lambda fast=fast: fast(args.batch)}, 1)[0]["batched"]
        naive_flops, fast_flops = flops(naive), flops(fast)
        t_naive, t_fast = statistics.median(naive_s), statistics.median(fast_s)
        row = {
            "preset": name, "device": str(device), "threads": torch.get_num_threads(),
            "samples": cfg.plan.samples, "iterations": cfg.plan.iterations,
            "horizon": cfg.plan.horizon, "history": cfg.model.history,
            "naive_seconds_per_plan": t_naive, "fast_seconds_per_plan": t_fast,
            "speedup": t_naive / t_fast,
            "batched_seconds_per_env_plan": statistics.median(batch_s) / args.batch,
            "batch": args.batch,
            "max_abs_embedding_difference": gap,
            "plans_identical": bool(torch.equal(naive_plan, fast_plan)),
            "max_abs_plan_difference": (naive_plan - fast_plan).abs().max().item(),
            "naive_gflop_per_plan": naive_flops / 1e9, "fast_gflop_per_plan": fast_flops / 1e9,
            "fast_gflops_achieved": fast_flops / 1e9 / t_fast,
            "matmul_gflops_peak": peak,
            **extra,
        }
        rows.append(row)
        print(f"{name:6s} naive {t_naive:7.3f} s/plan ({row['naive_gflop_per_plan']:.1f} GFLOP)"
              f" | fast {t_fast:7.3f} s/plan ({row['fast_gflop_per_plan']:.1f} GFLOP,"
              f" {row['fast_gflops_achieved']:.0f} GFLOP/s = "
              f"{100 * row['fast_gflops_achieved'] / peak:.0f}% of matmul peak)"
              f" | speedup {row['speedup']:.2f}x | batched x{args.batch}: "
              f"{row['batched_seconds_per_env_plan']:.3f} s per env-plan"
              f" | max |dz| {gap:.1e}, plans identical: {row['plans_identical']}"
              f" (max diff {row['max_abs_plan_difference']:.1e})")
        if args.compile:
            print(f"{name:6s} plan.compile: {row['compiled_seconds_per_plan']:.3f} s/plan "
                  f"(x{row['compiled_speedup']:.2f} vs naive) after a "
                  f"{row['compile_seconds']:.0f} s compile; max plan diff to naive "
                  f"{row['compiled_max_abs_plan_difference_to_naive']:.1e}, to fast "
                  f"{row['compiled_max_abs_plan_difference_to_fast']:.1e}")
        if args.bf16:
            print(f"{name:6s} plan.precision=bf16{' + compile' if args.compile else ''}: "
                  f"{row['bf16_seconds_per_plan']:.3f} s/plan "
                  f"(x{row['bf16_speedup']:.2f} vs naive); max plan diff to naive "
                  f"{row['bf16_max_abs_plan_difference_to_naive']:.1e} (not float32's plans)")
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
