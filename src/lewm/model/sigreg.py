"""SIGReg: the Sketched Isotropic Gaussian Regulariser (MODEL.md §5).

It is what keeps LeWM from collapsing without stop-gradients or EMA targets. A batch of
embeddings is pushed toward an isotropic Gaussian by testing many random 1-D projections of it
for normality (Cramér–Wold: all 1-D marginals Gaussian ⇔ the joint is Gaussian). Each
projection is scored with the Epps–Pulley statistic: the weighted squared distance between its
empirical characteristic function and the standard normal one, e^{-τ²/2}.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SIGReg(nn.Module):
    """z (T, N, D) → mean over projections and time steps of N·∫|φ̂(τ) − e^{-τ²/2}|² e^{-τ²/2}.

    The integral runs over [−3, 3]; the integrand is even, so it is a trapezoid rule on
    ``num_knots`` knots over [0, 3] with the inner weights doubled. The ×N factor makes the
    value of a Gaussian batch (≈1.05) independent of N, while a collapsed batch scores ≈0.40·N.
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
            n, d = z.shape[1], z.shape[2]
            draw_on = generator.device if generator is not None else z.device
            g = torch.randn(d, self.num_projections, generator=generator, device=draw_on)
            directions = (g / g.norm(dim=0, keepdim=True)).to(z.device)

            t = torch.linspace(0.0, 3.0, self.num_knots, device=z.device)
            gaussian_cf = torch.exp(-0.5 * t**2)
            trapezoid = torch.full_like(t, 2.0 * 3.0 / (self.num_knots - 1))
            trapezoid[[0, -1]] /= 2
            weights = trapezoid * gaussian_cf

            x = (z @ directions).unsqueeze(-1) * t  # (T, N, M, K)
            err = (x.cos().mean(1) - gaussian_cf) ** 2 + x.sin().mean(1) ** 2  # (T, M, K)
            return (n * (err @ weights)).mean()
