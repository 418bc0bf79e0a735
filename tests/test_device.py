"""Device choice, what train.precision=auto becomes, and the CPU allocator setting that
planning relies on."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from lewm import device as lewm_device
from lewm.device import keep_freed_memory, resolve_device, train_precision

# Allocates and frees a 64 MiB tensor 5 times per round, 4 rounds, and prints the minor page
# faults of each round: every round faults its pages afresh unless freed memory is kept.
FAULTS = """
import resource, sys, torch
from lewm.device import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
rounds = []
for _ in range(4):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(16 << 20)
    rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(rounds[-1])
"""


def _last_round_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_keep_freed_memory_stops_large_tensors_faulting_afresh() -> None:
    assert _last_round_faults("default") > 10_000  # 5 × 16,384 pages: the setting matters
    assert _last_round_faults("keep") < 1_000


def test_keep_freed_memory_is_a_no_op_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert keep_freed_memory() is False


def test_resolve_device_names_the_choices() -> None:
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="auto, cpu, cuda, mps"):
        resolve_device("tpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_device_computes_it(monkeypatch, native) -> None:
    """auto follows the device; a precision the user names is kept, even bf16 on a CPU that
    would emulate it (they may want its numerics)."""
    monkeypatch.setattr(lewm_device, "native_bf16", lambda device: native)
    cpu = torch.device("cpu")
    assert train_precision("auto", cpu) == ("bf16-mixed" if native else "32-true")
    for named in ("32-true", "bf16-mixed", "16-mixed"):
        assert train_precision(named, cpu) == named
