"""The `lewm compare` and `lewm sweep` commands; `register` adds them to the main app.

Both end in the same table (``lewm.report.compare``): compare reads run folders that exist,
sweep makes them first, one per value of a single swept key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lewm.cli_options import Device, Seed

Guard = Callable[[Callable[[], Any]], Any]


def print_comparison(console: Console, rows: list[dict[str, Any]], paths: dict[str, Path]) -> None:
    """The comparison with the cells of compare.md, turned so that each run is a column (a
    dozen metric columns do not fit a terminal; a few runs do); then where the files went."""
    from lewm.report.compare import FOOTNOTES, HEADER, table_rows

    cells = table_rows(rows)
    table = Table(title=f"{len(rows)} run(s) compared", show_lines=True)
    table.add_column("", overflow="fold")
    for run in cells:
        table.add_column(run[0], overflow="fold")
    for i, name in enumerate(HEADER[1:], 1):
        table.add_row(name, *(run[i] for run in cells))
    console.print(table)
    for row in rows:
        if row["kind_label"] != row["kind"]:  # a caveat the reader must not miss in a cell
            console.print(f"note: {row['name']}: {row['kind_label']}", highlight=False,
                          soft_wrap=True)
    for note in FOOTNOTES[:2]:
        console.print(note, highlight=False, soft_wrap=True)
    console.print(f"wrote {paths['markdown']}, {paths['json']}, {paths['curves']}",
                  highlight=False, soft_wrap=True)


def register(app: typer.Typer, console: Console, guarded: Guard) -> None:
    """Add this module's commands to `app`; `guarded` turns input errors into one clear line."""

    @app.command(name="compare")
    def compare_command(
        runs: Annotated[
            list[Path], typer.Argument(help="Run folders (each with a config.json).")
        ],
        out: Annotated[
            Path, typer.Option(help="Folder for compare.md, compare.json and curves.png.")
        ] = Path("compare"),
    ) -> None:
        """One table over run folders: kind, size, speed, losses, success with 95% CIs."""
        from lewm.report.compare import compare_runs

        rows, paths = guarded(lambda: compare_runs(runs, out))
        print_comparison(console, rows, paths)

    @app.command(name="sweep")
    def sweep_command(
        data: Annotated[Path, typer.Option(help="Training dataset (HDF5).")],
        out: Annotated[
            Path, typer.Option(help="Folder of the runs (OUT/KEY=V) and the comparison.")
        ],
        overrides: Annotated[
            list[str] | None,
            typer.Argument(
                help="Exactly one KEY=V1,V2,... (the swept key; e.g. "
                "model.sigreg_lambda=0.01,0.03,0.1) and any fixed key=value overrides.",
                show_default=False,
            ),
        ] = None,
        preset: Annotated[str, typer.Option(help="Named preset: tiny or paper.")] = "tiny",
        eval_seeds: Annotated[
            str, typer.Option(help="Evaluation seeds (start/goal pairs), comma-separated.")
        ] = "42",
        episodes: Annotated[int, typer.Option(help="Start/goal pairs per evaluation.")] = 50,
        seed: Seed = 0,
        device: Device = "auto",
        progress: Annotated[bool, typer.Option(help="Show progress bars.")] = False,
    ) -> None:
        """Train and evaluate one run per value of one key, then compare them (re-running
        resumes: finished runs and evaluations are kept)."""
        from lewm.sweep import parse_seeds, sweep

        def go() -> Any:
            return sweep(data, out, overrides or [], preset, parse_seeds(eval_seeds), episodes,
                         seed, device, progress, say=lambda m: console.print(m, highlight=False))

        rows, paths = guarded(go)
        print_comparison(console, rows, paths)
