"""The non-finite loss guard: a NaN or inf loss skips its optimiser step instead of poisoning
the weights, and a run whose losses stay non-finite stops instead of burning compute.

Isolated NaNs do happen in bf16 training (MODEL.md §9, le-wm #36); skipping one step costs
nothing. A streak means the weights or the data are broken, and more steps cannot help.
"""

from __future__ import annotations


class NonFiniteLossError(ValueError):
    """Training stopped because the loss stayed non-finite for too many consecutive steps.

    A ValueError, like the library's other errors that call for a change of settings, so the
    command line reports it as one line rather than a traceback.
    """


class NonFiniteGuard:
    """Counts non-finite steps, in total and in a row, and stops a persistent streak.

    ``max_consecutive`` non-finite steps in a row raise :class:`NonFiniteLossError`; 0 never
    stops (steps are still skipped and counted).
    """

    def __init__(self, max_consecutive: int) -> None:
        if max_consecutive < 0:
            raise ValueError(f"max_consecutive={max_consecutive}: expected >= 0")
        self.max_consecutive = max_consecutive
        self.total = 0
        self.consecutive = 0

    def update(self, finite: bool, step: int) -> None:
        """Record the loss of optimiser step ``step`` (already agreed on by all ranks)."""
        if finite:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"training stopped at step {step}: the loss was non-finite (NaN/inf) for "
                f"{self.consecutive} consecutive steps (train.max_nonfinite="
                f"{self.max_consecutive}); those steps were skipped, so the weights are unchanged "
                f"since step {step - self.consecutive + 1}"
            )
