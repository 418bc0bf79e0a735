"""Command-line option types that every ``lewm`` command module shares."""

from __future__ import annotations

from typing import Annotated

import typer

from lewm.config import SEED_MAX
from lewm.device import DEVICE_CHOICES

# Bounded to Lightning's seed range, the one a run's config accepts too.
Seed = Annotated[
    int,
    typer.Option(min=0, max=SEED_MAX, help="Seed for every random choice; same seed, same result."),
]
Device = Annotated[str, typer.Option(help=f"Compute device: {'|'.join(DEVICE_CHOICES)}.")]
