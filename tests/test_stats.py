"""Success-rate intervals against values computed by hand."""

from __future__ import annotations

import pytest

from lewm.stats import across_sets, wilson_interval


def test_wilson_interval_matches_known_values():
    # Computed by hand from the Wilson formula with z = 1.959964.
    assert wilson_interval(45, 50) == pytest.approx((0.786398, 0.956524), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-5)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-5))
    assert wilson_interval(10, 10) == (pytest.approx(0.722467, abs=1e-5), 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


def test_across_sets_pools_episodes_and_spreads_set_means():
    out = across_sets([(25, 50), (30, 50), (35, 50)])
    assert out["pooled"]["successes"] == 90 and out["pooled"]["episodes"] == 150
    assert out["pooled"]["wilson95"] == pytest.approx(list(wilson_interval(90, 150)))
    assert out["mean_rate"] == pytest.approx(0.6) and out["std_rate"] == pytest.approx(0.1)
    # t(0.975, 2) = 4.302653: half-width 4.302653 · 0.1 / √3 = 0.248414.
    assert out["mean_t95"] == pytest.approx([0.351586, 0.848414], abs=1e-6)


def test_one_set_has_no_spread_and_none_is_refused():
    out = across_sets([(45, 50)])
    assert out["sets"] == 1 and out["std_rate"] is None and out["mean_t95"] is None
    assert out["pooled"]["wilson95"] == pytest.approx([0.786398, 0.956524], abs=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        across_sets([])
