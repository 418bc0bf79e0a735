"""The checks every config section shares, in a leaf module that imports nothing of lewm.

Model configs live beside their models (``lewm.model.config``, ``lewm.baselines``) and
``lewm.config`` composes them; both need the same refusal messages, which are kept here so
that a model config never imports the whole run config with its presets.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from typing import Any

# The largest image side a model may take: every activation and the position embedding grow
# with its square, and no LeWM environment renders more than a few hundred pixels.
MAX_IMAGE_SIZE = 1024
# How MuJoCo scenes are drawn: ``faithful`` as the released datasets were (shadows,
# reflections, 4x multisampling), ``fast`` without those lighting effects (same geometry and
# colours), about 10x cheaper with Mesa on a CPU. 2-D scenes have no such effects: both modes
# draw them alike. Here because data and eval configs check it without loading environments.
RENDER_MODES = ("faithful", "fast")
# Training holds weights, gradients and Adam's two moments, four float32 copies: a model
# whose weights alone take more than physical memory / TRAINING_COPIES cannot train here.
TRAINING_COPIES = 4


class ConfigError(ValueError):
    """A preset name, an override or a saved config that cannot be used.

    ``field`` is the dotted path of the offending field when there is one, so a caller
    that knows the field under another name (the official config) can say which.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def show(value: Any) -> str:
    """A value for a one-line message: its repr, cut short if a file holds a huge one."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def require(ok: bool, dotted: str, value: Any, expected: str) -> None:
    """Refuse the field at ``dotted`` unless ``ok``, saying what was expected instead."""
    if not ok:
        raise ConfigError(f"{dotted}={show(value)}: expected {expected}", field=dotted)


def at_least(section: str, obj: Any, low: int, *names: str) -> None:
    """Each of ``names`` (integer fields of ``obj``) is ``low`` or more."""
    for name in names:
        value = getattr(obj, name)
        require(value >= low, f"{section}.{name}", value, f"an integer >= {low}")


def finite(section: str, obj: Any) -> None:
    """Every float field of ``obj`` is finite: NaN passes every comparison check unnoticed
    and inf turns the weights into NaN within a step."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float):
            require(math.isfinite(value), f"{section}.{f.name}", value, "a finite number")


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def approx(count: int) -> str:
    """A count to three digits, even one too large for a float."""
    return f"{count:.3g}" if count < 10**300 else "more than 1e300"


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the system does not say (not POSIX)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(cfg: Any, section: str) -> None:
    """Refuse a model config whose float32 weights (``cfg.num_parameters()``, in closed form)
    take more than a TRAINING_COPIES-th of this machine's memory, naming the size field whose
    growth made it so, before any tensor is allocated."""
    memory = physical_memory()
    count = cfg.num_parameters()
    if memory is None or 4 * count * TRAINING_COPIES <= memory:
        return
    sizes = [name for name, tp in field_types(type(cfg)).items() if tp is int]
    culprit = max(
        sizes, key=lambda n: count - dataclasses.replace(cfg, **{n: 1}).num_parameters()
    )
    raise ConfigError(
        f"{section}.{culprit}={show(getattr(cfg, culprit))}: expected a smaller value; "
        f"it makes a model of {approx(count)} parameters "
        f"({approx(4 * count // 2**30)} GiB as float32), more than this machine's "
        f"{memory // 2**30} GiB of memory can train (weights, gradients, optimiser state)",
        field=f"{section}.{culprit}",
    )
