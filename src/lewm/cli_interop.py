"""The `lewm` commands for interop; `register` adds them to the main app."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

Guard = Callable[[Callable[[], Any]], Any]


def register(app: typer.Typer, console: Console, guarded: Guard) -> None:
    """Add this module's commands to `app`; `guarded` turns input errors into one clear line."""

    @app.command()
    def inspect(
        file: Annotated[
            Path,
            typer.Argument(
                metavar="FILE",
                help="Episode file (.h5), e.g. tworoom.h5, or Lance dataset (.lance folder).",
            ),
        ],
    ) -> None:
        """Episodes, columns, image size and action statistics of a dataset; flags layout
        problems (exit code 1 when there are any)."""
        from lewm.interop import inspect_dataset

        report = guarded(lambda: inspect_dataset(file))
        summary = Table(title=str(file), show_header=False)
        summary.add_column("field")
        summary.add_column("value")
        lengths = report.episode_length
        image = report.image_shape
        for name, value in (
            ("environment", report.env or "(not stated: pass env=NAME to lewm train)"),
            ("episodes", f"{report.episodes:,}"),
            ("rows", f"{report.rows:,}"),
            (
                "episode length min/mean/max",
                "-" if lengths is None else f"{lengths[0]} / {lengths[1]:.1f} / {lengths[2]}",
            ),
            ("episode index column", report.episode_column or "-"),
            ("image size", "-" if image is None else f"{image[0]}x{image[1]}"),
            ("action dim", str(report.action_dim)),
        ):
            summary.add_row(name, value)
        console.print(summary)

        columns = Table(title="columns")
        for header in ("name", "shape", "dtype", "chunks", "compression"):
            columns.add_column(header)
        for c in report.columns:
            columns.add_row(c.name, str(c.shape), c.dtype, str(c.chunks), c.compression)
        console.print(columns)

        if report.action_mean:
            stats = Table(title="action statistics (non-NaN rows)")
            for header in ("dim", "mean", "std", "min", "max"):
                stats.add_column(header, justify="right")
            for d in range(report.action_dim):
                stats.add_row(
                    str(d),
                    *(
                        f"{values[d]:.4g}"
                        for values in (
                            report.action_mean,
                            report.action_std,
                            report.action_min,
                            report.action_max,
                        )
                    ),
                )
            console.print(stats)

        if report.problems:
            for problem in report.problems:
                console.print(
                    f"[bold yellow]problem:[/] {problem}", highlight=False, soft_wrap=True
                )
            raise typer.Exit(1)
        console.print("[green]no layout problems found[/]")

    @app.command()
    def convert(
        src: Annotated[
            Path,
            typer.Argument(
                metavar="IN",
                help="Dataset to read: an episode .h5 file (the official layout too; data.h5 "
                "for a set of shards) or a Lance dataset (.lance folder).",
            ),
        ],
        dst: Annotated[
            Path,
            typer.Argument(
                metavar="OUT", help="Dataset to write: NAME.lance for Lance, NAME.h5 for HDF5."
            ),
        ],
        overwrite: Annotated[
            bool, typer.Option(help="Replace OUT if it is a regular file or a Lance dataset.")
        ] = False,
    ) -> None:
        """Convert a dataset between HDF5 and Lance (stable-worldmodel's format), losslessly:
        every column, episode and attribute; frames are written to Lance as PNG."""
        from lewm.data.convert import convert as convert_dataset
        from lewm.data.shards import open_store

        out = guarded(lambda: convert_dataset(src, dst, overwrite=overwrite, progress=True))
        with open_store(out, cache="none") as store:
            console.print(
                f"wrote {out}: {store.num_episodes:,} episodes, {store.num_rows:,} rows, "
                f"{len(store.columns)} columns"
            )

    @app.command(name="import-checkpoint")
    def import_checkpoint(
        src: Annotated[
            Path,
            typer.Argument(
                metavar="DIR", help="Folder with the official weights.pt and config.json."
            ),
        ],
        out: Annotated[Path, typer.Option(help="New lewm run folder (must not exist yet).")],
        data: Annotated[
            Path,
            typer.Option(
                help="Dataset the checkpoint was trained on; its "
                "action statistics become the normalizer."
            ),
        ],
        env: Annotated[
            str | None, typer.Option(help="Environment name, when the data file does not state it.")
        ] = None,
    ) -> None:
        """Load an official LeWM checkpoint into a lewm run folder."""
        from lewm.interop import import_official

        cfg = guarded(lambda: import_official(src, out, data, env))
        m = cfg.model
        console.print(
            f"wrote {out}: env {cfg.env}, {m.image_size}px, history {m.history}, "
            f"action dim {m.action_dim} x frameskip {m.frameskip}"
        )

    @app.command(name="export-checkpoint")
    def export_checkpoint(
        run: Annotated[
            Path, typer.Argument(metavar="RUN_DIR", help="lewm run folder with a checkpoint.")
        ],
        out: Annotated[Path, typer.Option(help="New folder for weights.pt + config.json.")],
        push: Annotated[
            str | None,
            typer.Option(help="Then upload it to hf://OWNER/REPO[@REVISION][/PATH] (created "
                         "private if missing; needs HF_TOKEN or hf auth login).",
                         show_default=False),
        ] = None,
    ) -> None:
        """Write a lewm checkpoint in the official layout (weights.pt + config.json)."""
        from lewm import hub
        from lewm.interop import export_official

        if push is not None:
            guarded(lambda: hub.push_target(push))
        count = guarded(lambda: export_official(run, out))
        console.print(f"wrote {out}: {count} tensors in weights.pt, config.json")
        if push is not None:
            commit = guarded(lambda: hub.push_folder(out, push))
            console.print(f"pushed to {push}: {commit}", highlight=False, soft_wrap=True)
