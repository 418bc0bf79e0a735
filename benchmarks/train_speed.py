"""Training throughput (frames/s) of a full step — forward, backward, clipping, AdamW — per
preset, for lewm's model and for a plain reference implementation of the same model.

The reference below is written the way the reference code computes LeWM: eager PyTorch in
float32, attention as an explicit softmax over q·kᵀ, no fused kernels. It loads lewm's weights
(same parameter names), and before timing both compute the loss of one batch with the same
SIGReg directions; the run fails if they disagree beyond tolerance. Both use torch's default
AdamW, as training does: fused AdamW would save ~30 ms a paper step on CPU, but Lightning
refuses it together with mixed precision and gradient clipping.

Not a test: prints figures and writes JSON. Synthetic uint8 clips, so no dataset needed.
    python benchmarks/train_speed.py --presets tiny paper --precision fp32 bf16
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from common import preset_parser, write_rows
from torch import Tensor, nn

from lewm.config import ModelConfig, preset
from lewm.device import resolve_device
from lewm.model import LeWM
from lewm.model.lewm import IMAGENET_MEAN, IMAGENET_STD
from lewm.model.vit import MLP, SelfAttention, explicit_attention

DEFAULT_BATCH = {"tiny": 64, "paper": 16}
# Relative loss tolerance against the float32 reference on the same batch and directions:
# float32 differs only in summation order; bf16 autocast rounds every matmul input to 8 bits.
LOSS_RTOL = {"fp32": 1e-4, "bf16": 3e-2}


# ---------------------------------------------------------------- the reference model
class RefSelfAttention(SelfAttention):
    """lewm's parameters (so weights load by name), the reference's explicit softmax."""

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self.proj(explicit_attention(q, k, v, False, 0.0).transpose(1, 2).reshape(b, t, -1))


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.attn = RefSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)
        self.mlp = MLP(dim, mlp)  # already plain eager: Linear, exact GELU, Linear

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefViT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim, patches = cfg.enc_dim, (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, dim, cfg.patch_size, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + patches, dim))
        self.blocks = nn.ModuleList(
            RefBlock(dim, cfg.enc_heads, cfg.enc_mlp) for _ in range(cfg.enc_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class RefProjector(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(), nn.Linear(hidden, out)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


class RefActionEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv1d(cfg.block_dim, 10, 1)
        self.embed = nn.Sequential(
            nn.Linear(10, cfg.action_hidden), nn.SiLU(), nn.Linear(cfg.action_hidden, cfg.embed_dim)
        )

    def forward(self, blocks: Tensor) -> Tensor:
        return self.embed(self.patch_embed(blocks.transpose(1, 2)).transpose(1, 2))


class RefCausalAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        inner = cfg.pred_heads * cfg.pred_dim_head
        self.heads, self.dropout = cfg.pred_heads, cfg.pred_dropout
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.to_qkv = nn.Linear(cfg.embed_dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, cfg.embed_dim), nn.Dropout(cfg.pred_dropout))

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        dropout = self.dropout if self.training else 0.0
        out = explicit_attention(*qkv, True, dropout)
        return self.to_out(out.transpose(1, 2).reshape(b, t, -1))


class RefFeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim, p = cfg.embed_dim, cfg.pred_dropout
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, cfg.pred_mlp), nn.GELU(), nn.Dropout(p),
            nn.Linear(cfg.pred_mlp, dim), nn.Dropout(p),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class RefConditionalBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.attn = RefCausalAttention(cfg)
        self.mlp = RefFeedForward(cfg)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        h = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale1) + shift1
        x = x + gate1 * self.attn(h)
        h = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class RefPredictor(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.zeros(1, cfg.history, cfg.embed_dim))
        self.transformer = nn.ModuleDict(
            dict(
                layers=nn.ModuleList(RefConditionalBlock(cfg) for _ in range(cfg.pred_depth)),
                norm=nn.LayerNorm(cfg.embed_dim),
            )
        )

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        x = z + self.pos_embedding[:, : z.shape[1]]
        for layer in self.transformer.layers:
            x = layer(x, c)
        return self.transformer.norm(x)


def ref_sigreg(z: Tensor, projections: int, knots: int, generator: torch.Generator) -> Tensor:
    """Epps–Pulley over random projections (MODEL.md §5), one time step after another."""
    g = torch.randn(z.shape[-1], projections, generator=generator, device=generator.device)
    directions = (g / g.norm(dim=0, keepdim=True)).to(z.device)
    t = torch.linspace(0.0, 3.0, knots, device=z.device)
    phi = torch.exp(-0.5 * t**2)
    weights = torch.full_like(t, 6.0 / (knots - 1)) * phi
    weights[[0, -1]] /= 2
    values = []
    for zt in z.float():
        x = (zt @ directions).unsqueeze(-1) * t
        err = (x.cos().mean(0) - phi) ** 2 + x.sin().mean(0) ** 2
        values.append((zt.shape[0] * (err @ weights)).mean())
    return torch.stack(values).mean()


class RefLeWM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = RefViT(cfg)
        self.projector = RefProjector(cfg.enc_dim, cfg.proj_hidden, cfg.embed_dim)
        self.action_encoder = RefActionEncoder(cfg)
        self.predictor = RefPredictor(cfg)
        self.pred_proj = RefProjector(cfg.embed_dim, cfg.proj_hidden, cfg.embed_dim)

    def loss(self, pixels: Tensor, blocks: Tensor, generator: torch.Generator) -> Tensor:
        cfg = self.cfg
        mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1)
        x = (pixels.float() / 255 - mean) / std
        s = cfg.image_size
        z = self.projector(self.encoder(x.reshape(-1, 3, s, s))[:, 0])
        z = z.reshape(*pixels.shape[:2], -1)
        c = self.action_encoder(blocks[:, : cfg.history])
        pred = self.pred_proj(self.predictor(z[:, : cfg.history], c))
        target = z[:, cfg.num_preds : cfg.num_preds + cfg.history]
        sigreg = ref_sigreg(z.transpose(0, 1), cfg.sigreg_projections, cfg.sigreg_knots, generator)
        return F.mse_loss(pred, target) + cfg.sigreg_lambda * sigreg


# ---------------------------------------------------------------- measuring
def median_seconds(step: Callable[[], None], steps: int, device: torch.device) -> float:
    times = []
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def train_step(
    loss_fn: Callable[[torch.Generator], Tensor], model: nn.Module, opt: torch.optim.Optimizer
) -> Callable[[], None]:
    def step() -> None:
        loss = loss_fn(torch.Generator().manual_seed(0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def autocast(precision: str, device: torch.device) -> torch.autocast | nullcontext:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def bench_preset(
    name: str, batch: int, precisions: list[str], steps: int, device: torch.device
) -> list[dict]:
    cfg = preset(name).model
    torch.manual_seed(0)
    ours = LeWM(cfg).to(device).train()
    with torch.no_grad():  # zero-initialised gates would hide the predictor from the check
        for p in ours.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    ref = RefLeWM(cfg).to(device).train()
    ref.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(1)
    s = cfg.image_size
    pixels = torch.randint(0, 256, (batch, cfg.num_steps, 3, s, s), generator=gen,
                           dtype=torch.uint8).to(device)
    blocks = torch.randn(batch, cfg.num_steps, cfg.block_dim, generator=gen).to(device)

    # Same loss on the same batch and directions, dropout off (its masks are random).
    check = dataclasses.replace(cfg, pred_dropout=0.0)
    ours_check, ref_check = LeWM(check).to(device), RefLeWM(check).to(device)
    ours_check.load_state_dict(ours.state_dict())
    ref_check.load_state_dict(ours.state_dict())
    with torch.no_grad():
        ref_loss = ref_check.loss(pixels, blocks, torch.Generator().manual_seed(2)).item()

    def run_ref(g: torch.Generator) -> Tensor:
        return ref.loss(pixels, blocks, g)

    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-4)
    ref_seconds = median_seconds(train_step(run_ref, ref, ref_opt), steps, device)
    frames = batch * cfg.num_steps
    rows = [_row(name, "reference fp32", batch, frames, ref_seconds, ref_seconds, ref_loss,
                 ref_loss, device)]
    for precision in precisions:
        model = copy.deepcopy(ours)
        with torch.no_grad(), autocast(precision, device):
            loss = ours_check.loss(pixels, blocks, torch.Generator().manual_seed(2))["loss"].item()
        if abs(loss - ref_loss) > LOSS_RTOL[precision] * abs(ref_loss):
            raise SystemExit(
                f"{name} {precision}: loss {loss:.6f} differs from the reference's "
                f"{ref_loss:.6f} by more than {LOSS_RTOL[precision]:.0e} relative"
            )

        def run_ours(g: torch.Generator, model: LeWM = model, precision: str = precision) -> Tensor:
            with autocast(precision, device):
                return model.loss(pixels, blocks, g)["loss"]

        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        seconds = median_seconds(train_step(run_ours, model, opt), steps, device)
        rows.append(_row(name, f"lewm {precision}", batch, frames, seconds, ref_seconds, loss,
                         ref_loss, device))
    return rows


def _row(name: str, impl: str, batch: int, frames: int, seconds: float, ref_seconds: float,
         loss: float, ref_loss: float, device: torch.device) -> dict:
    row = {"preset": name, "implementation": impl, "batch": batch, "frames_per_step": frames,
           "seconds_per_step": seconds, "frames_per_second": frames / seconds,
           "speedup_vs_reference": ref_seconds / seconds, "loss": loss,
           "loss_rel_diff_vs_reference": abs(loss - ref_loss) / abs(ref_loss),
           "device": str(device), "threads": torch.get_num_threads()}
    print(f"{name:6s} {impl:15s} batch {batch:4d} x {frames // batch} frames: "
          f"{seconds:.3f} s/step, {frames / seconds:8.1f} frames/s, "
          f"x{row['speedup_vs_reference']:.2f} vs reference, loss {loss:.5f} "
          f"(rel diff {row['loss_rel_diff_vs_reference']:.1e})")
    return row


def main() -> None:
    parser = preset_parser(__doc__, "train_speed")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"],
                        choices=sorted(LOSS_RTOL))
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    for name in args.presets:
        rows += bench_preset(name, DEFAULT_BATCH.get(name, 16), args.precision, args.steps, device)
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
