"""Confidence intervals for success rates: what a 50-episode evaluation can and cannot say.

Evaluations of 50 pairs swing by several points between pair seeds, so a rate is reported
with its interval, per pair set (Wilson) and across sets.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

from scipy import stats


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion: unlike p ± z·se it stays inside
    [0, 1] and keeps a sensible width at 0 or n successes, which small evaluations hit."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes}/{n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes the bound is exactly 0 or 1; rounding would leave 1e-17 off it.
    lo = 0.0 if successes == 0 else center - half
    hi = 1.0 if successes == n else center + half
    return lo, hi


def across_sets(counts: Sequence[tuple[int, int]], confidence: float = 0.95) -> dict[str, Any]:
    """Success over several pair sets, each (successes, episodes).

    Two views, because they answer different questions: ``pooled`` treats every episode as
    one draw (Wilson on the total), which is right when the sets are samples of the same
    pairs distribution; ``mean`` with a Student-t interval over the per-set rates also
    carries the set-to-set spread, and needs at least two sets.
    """
    if not counts:
        raise ValueError("need at least one pair set")
    successes = sum(s for s, _ in counts)
    episodes = sum(n for _, n in counts)
    rates = [s / n for s, n in counts]
    out: dict[str, Any] = {
        "sets": len(counts),
        "pooled": {
            "successes": successes,
            "episodes": episodes,
            "rate": successes / episodes,
            "wilson95": list(wilson_interval(successes, episodes, confidence)),
        },
        "mean_rate": statistics.fmean(rates),
        "std_rate": None,
        "mean_t95": None,
    }
    if len(rates) >= 2:
        sd = statistics.stdev(rates)
        half = stats.t.ppf(0.5 + confidence / 2, len(rates) - 1) * sd / math.sqrt(len(rates))
        out["std_rate"] = sd
        out["mean_t95"] = [max(0.0, out["mean_rate"] - half), min(1.0, out["mean_rate"] + half)]
    return out
