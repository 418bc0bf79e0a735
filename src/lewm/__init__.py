"""LeWorldModel: a JEPA world model trained end to end from pixels, planning in latent space.

``import lewm`` stays light (no torch, no simulators): :func:`load_policy` is loaded on first
use, so that ``import lewm.envs`` for the gymnasium environments alone costs no torch import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lewm.policy import load_policy

__all__ = ["load_policy"]


def __getattr__(name: str) -> Any:
    if name == "load_policy":
        from lewm.policy import load_policy

        return load_policy
    raise AttributeError(f"module 'lewm' has no attribute {name!r}")
