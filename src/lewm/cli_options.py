"""Command-line option types that every ``lewm`` command module shares."""

from __future__ import annotations

from typing import Annotated

import typer

from lewm.device import DEVICE_CHOICES

Seed = Annotated[int, typer.Option(help="Seed for every random choice; same seed, same result.")]
Device = Annotated[str, typer.Option(help=f"Compute device: {'|'.join(DEVICE_CHOICES)}.")]
