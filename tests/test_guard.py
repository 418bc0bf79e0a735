"""The non-finite loss guard: an injected NaN loss skips its step and is counted; a streak of
them stops the run with a message naming the last good checkpoint."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import SMALL_MODEL

from lewm.checkpoint import load_checkpoint
from lewm.config import resolve
from lewm.model import LeWM
from lewm.train.fit import train
from lewm.train.guard import NonFiniteGuard, NonFiniteLossError


def test_guard_counts_and_stops_only_a_streak():
    guard = NonFiniteGuard(max_consecutive=3)
    for step, finite in enumerate([True, False, False, True, False, False]):
        guard.update(finite, step)
    assert (guard.total, guard.consecutive) == (4, 2)
    with pytest.raises(NonFiniteLossError, match="non-finite .* for 3 consecutive steps"):
        guard.update(False, 6)


def test_guard_with_zero_never_stops():
    guard = NonFiniteGuard(max_consecutive=0)
    for step in range(100):
        guard.update(False, step)
    assert guard.total == 100


def inject_nan(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int] | None, from_call: int = -1):
    """Make LeWM.loss return a NaN loss (with NaN gradients) and NaN embeddings, as a bf16
    overflow in the forward pass would, at chosen training-mode calls."""
    original = LeWM.loss
    calls = {"n": 0}

    def loss(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            n = calls["n"]
            calls["n"] += 1
            if (bad_calls and n in bad_calls) or 0 <= from_call <= n:
                out["loss"] = out["loss"] * float("nan")
                out["z"] = out["z"] * float("nan")
        return out

    monkeypatch.setattr(LeWM, "loss", loss)


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_and_counted(tmp_path, tworoom_file, monkeypatch):
    inject_nan(monkeypatch, {2, 3})
    cfg = resolve("tiny", SMALL_MODEL, {"train.max_steps": 5})
    summary = train(tworoom_file, tmp_path, cfg, device="cpu", progress=False)
    assert (summary["steps"], summary["nonfinite_steps"]) == (5, 2)
    # Had a NaN step reached AdamW, every weight would be NaN now.
    model = load_checkpoint(tmp_path).model
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    with open(tmp_path / "logs/version_0/metrics.csv") as f:
        counts = [float(r["train/nonfinite_steps"]) for r in csv.DictReader(f)
                  if r.get("train/nonfinite_steps")]
    assert counts == [0, 0, 1, 2, 2]


@pytest.mark.slow
def test_persistent_nonfinite_loss_stops_with_the_last_good_checkpoint(
    tmp_path, tworoom_file, monkeypatch
):
    inject_nan(monkeypatch, None, from_call=2)
    cfg = resolve("tiny", [*SMALL_MODEL, "train.max_nonfinite=3"], {"train.max_steps": 20})
    with pytest.raises(NonFiniteLossError) as caught:
        train(tworoom_file, tmp_path, cfg, device="cpu", progress=False)
    message = str(caught.value)
    assert "3 consecutive steps" in message
    assert "weights are unchanged since step 2" in message
    assert f"last good checkpoint: {tmp_path / 'checkpoints' / 'last.ckpt'}" in message
