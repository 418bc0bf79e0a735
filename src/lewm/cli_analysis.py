"""The `lewm` commands for analysis; `register` adds them to the main app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

Guard = Callable[[Callable[[], Any]], Any]


def register(app: typer.Typer, console: Console, guarded: Guard) -> None:
    """Add this module's commands to `app`; `guarded` turns input errors into one clear line."""
