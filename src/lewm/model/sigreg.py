"""SIGReg: the Sketched Isotropic Gaussian Regulariser (MODEL.md §5, §5.1).

It is what keeps LeWM from collapsing without stop-gradients or EMA targets. A batch of
embeddings is pushed toward an isotropic Gaussian by testing many random 1-D projections of it
for normality (Cramér–Wold: all 1-D marginals Gaussian ⇔ the joint is Gaussian). Each
projection is scored with the Epps–Pulley statistic: the weighted squared distance between its
empirical characteristic function and the standard normal one, e^{-τ²/2}.

Under data parallelism each rank holds only part of the batch, and the statistic of a part
is not the statistic of the whole: the characteristic-function sums are therefore summed over
all ranks before the statistic is taken (§5.1), through an all-reduce that autograd sees.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward also sums the incoming gradient over ranks.

    Every rank's loss is a function of the global sums, so each rank receives the same
    gradient for them; summing those R copies and letting DDP average the parameter
    gradients by R gives exactly the single-process gradient of the concatenated batch.
    Treating the other ranks' terms as constants instead makes SIGReg's gradient R times
    too small (MODEL.md §5.1.4).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor) -> Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def global_sum(tensor: Tensor) -> Tensor:
    """Differentiable sum of ``tensor`` over all ranks; the identity in a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _AllReduceSum.apply(tensor)
    return tensor


class SIGReg(nn.Module):
    """z (T, N, D) → mean over projections and time steps of N·∫|φ̂(τ) − e^{-τ²/2}|² e^{-τ²/2}.

    The integral runs over [−3, 3]; the integrand is even, so it is a trapezoid rule on
    ``num_knots`` knots over [0, 3] with the inner weights doubled. The ×N factor makes the
    value of a Gaussian batch (≈1.05) independent of N, while a collapsed batch scores ≈0.40·N.

    In a process group of several ranks, N is the global batch and the call is a collective:
    every rank must make it, with the same directions (pass generators seeded alike).
    """

    def __init__(self, num_projections: int = 1024, num_knots: int = 17) -> None:
        super().__init__()
        if num_knots < 2:
            raise ValueError(f"SIGReg needs at least 2 knots, got {num_knots}")
        self.num_projections = num_projections
        self.num_knots = num_knots

    def forward(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Fresh random directions at every call, so the test cannot be gamed by a fixed sketch.

        Runs in float32 with autocast off: the statistic is a small difference of averaged
        cosines, which bf16 (the reference's choice) rounds away. Directions come from
        ``generator`` when given (on the generator's device, so a CPU generator gives the same
        directions on every device and rank), else from torch's default RNG on z's device.
        """
        if z.dim() == 2:
            z = z.unsqueeze(0)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            d = z.shape[2]
            draw_on = generator.device if generator is not None else z.device
            g = torch.randn(d, self.num_projections, generator=generator, device=draw_on)
            directions = (g / g.norm(dim=0, keepdim=True)).to(z.device)

            t = torch.linspace(0.0, 3.0, self.num_knots, device=z.device)
            gaussian_cf = torch.exp(-0.5 * t**2)
            trapezoid = torch.full_like(t, 2.0 * 3.0 / (self.num_knots - 1))
            trapezoid[[0, -1]] /= 2
            weights = trapezoid * gaussian_cf

            x = (z @ directions).unsqueeze(-1) * t  # (T, N, M, K)
            # One collective carries both sums and the sample count, so ranks may even hold
            # different numbers of samples.
            count = torch.full((1,), float(z.shape[1]), device=z.device)
            local = torch.cat([x.cos().sum(1).flatten(), x.sin().sum(1).flatten(), count])
            total = global_sum(local)
            n = total[-1]
            steps, _, projections, knots = x.shape
            cos_mean, sin_mean = (total[:-1] / n).view(2, steps, projections, knots)
            err = (cos_mean - gaussian_cf) ** 2 + sin_mean**2  # (T, M, K)
            return (n * (err @ weights)).mean()
