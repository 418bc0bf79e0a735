"""Checks that every environment applies the same way to its constructor and reset."""

from __future__ import annotations

from typing import Any

import numpy as np

from lewm.config_checks import RENDER_MODES

RESET_OPTIONS = ("state", "goal_state")


def check_render(render: Any) -> str:
    if render not in RENDER_MODES:
        raise ValueError(f"render mode {render!r}: expected one of {', '.join(RENDER_MODES)}")
    return str(render)


def check_render_mode(render_mode: Any) -> str:
    """gymnasium's ``render_mode``: every environment here draws ``rgb_array`` frames, since
    pixels are what the world models see. ``None`` (gymnasium's "no preference") is taken as
    that too; any other mode is refused rather than ignored."""
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode {render_mode!r}: only 'rgb_array' (or None) is supported")
    return "rgb_array"


def check_resolution(resolution: Any) -> int:
    """Images are square; below 8 px nothing of any scene survives."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(f"resolution must be an integer >= 8, got {resolution!r}")
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    return int(resolution)


def reset_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The reset options as a dict; unknown keys are rejected because a misspelt key would
    otherwise silently give a random episode instead of the requested one."""
    options = dict(options or {})
    unknown = set(options) - set(RESET_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown reset option(s) {sorted(unknown)}; accepted: 'state', 'goal_state'"
        )
    return options


def state_vector(value: Any, name: str, size: int, layout: str) -> np.ndarray:
    """A float64 state of ``size`` finite numbers (a copy), or an error naming the layout."""
    try:
        state = np.array(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be {size} finite numbers ({layout}), got {value!r}") from err
    if state.shape != (size,) or not np.all(np.isfinite(state)):
        raise ValueError(
            f"{name} must be {size} finite numbers ({layout}), got shape {np.shape(value)}"
        )
    return state


def start_and_goal(options: dict[str, Any], start: Any, goal: Any) -> tuple[Any, Any]:
    """The start and goal states, each taken from ``options`` where given there.

    Environments draw both defaults before calling this whatever the options are, so the
    random stream after a reset does not depend on which options were passed.
    """
    if options.get("state") is not None:
        start = options["state"]
    if options.get("goal_state") is not None:
        goal = options["goal_state"]
    return start, goal
