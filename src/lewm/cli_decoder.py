"""The `lewm decoder` command; `register` adds it to the main app.

It trains the visualisation decoder of ``lewm.analysis.decoder`` on a finished run, prints
its held-out error beside the mean-frame baseline, and draws a few held-out episodes as
GIFs (real | imagined | reconstructed) so a person can see what the model predicts.
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


def _imagination_gifs(run: Path, device: Any, episodes: int, seed: int) -> list[Path]:
    """GIFs of up to ``episodes`` held-out episodes, drawn with ``seed``, in RUN/decoder/."""
    import numpy as np

    from lewm.analysis.decoder import GIF_FOLDER, load_decoder, write_imagination_gifs
    from lewm.checkpoint import load_checkpoint
    from lewm.data import open_store
    from lewm.data.clips import heldout_episodes

    ckpt = load_checkpoint(run, device)
    decoder = load_decoder(run, device)
    with open_store(ckpt.config.data.path, cache="none") as store:
        chosen = np.random.default_rng(seed).permutation(heldout_episodes(ckpt.config, store))
        return write_imagination_gifs(
            ckpt, decoder, store, np.sort(chosen[:episodes]), run / GIF_FOLDER
        )


def register(app: typer.Typer, console: Console, guarded: Guard) -> None:
    """Add this module's command to `app`; `guarded` turns input errors into one clear line."""

    @app.command(name="decoder")
    def decoder_command(
        run: Annotated[Path, typer.Argument(help="Run folder with a trained checkpoint.")],
        steps: Annotated[int, typer.Option(min=1, help="Decoder training steps.")] = 2000,
        batch_size: Annotated[int, typer.Option(min=1, help="Frames per step.")] = 64,
        lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate (cosine decay).")]
        = 1e-3,
        arch: Annotated[
            str, typer.Option(help="conv (upsampling convolutions) or cross (the paper's "
                                   "cross-attention decoder, BASELINES.md §6).")
        ] = "conv",
        patch_size: Annotated[
            int, typer.Option(min=0, help="--arch cross only: pixels per decoded patch side "
                                          "(0: 16 at >= 128 px, else 8).")
        ] = 0,
        imagine_episodes: Annotated[
            int, typer.Option(min=0, help="Held-out episodes drawn as GIFs in RUN/decoder/.")
        ] = 2,
        seed: Seed = 0,
        device: Device = "auto",
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ) -> None:
        """Train a pixel decoder on the frozen model's embeddings; show what it imagines."""
        from lewm.analysis.decoder import FIGURES, train_decoder
        from lewm.device import resolve_device

        def go() -> tuple[dict, list[Path]]:
            where = resolve_device(device)
            figures = train_decoder(run, steps, batch_size, lr, seed, where, progress,
                                    patch_size or None, arch=arch)
            gifs = _imagination_gifs(run, where, imagine_episodes, seed) if imagine_episodes else []
            return figures, gifs

        figures, gifs = guarded(go)
        moving = figures["moving_pixels"]
        table = Table(title=f"{figures['arch']} pixel decoder: {figures['heldout_frames']} "
                            f"held-out frames ({figures['heldout']})")
        for column in ("decoder", "MSE", "PSNR (dB)",
                       f"MSE, moving pixels ({moving['fraction']:.1%})"):
            table.add_column(column, justify="left" if column == "decoder" else "right")
        for key, label in (("before", "untrained"), ("after", f"after {figures['steps']} steps"),
                           ("mean_frame", "mean training frame")):
            table.add_row(label, f"{figures['mse'][key]:.5f}", f"{figures['psnr_db'][key]:.2f}",
                          f"{moving['mse'][key]:.4f}")
        console.print(table)
        console.print(f"decoder: {figures['weights']}\nfigures: {run / FIGURES}",
                      highlight=False, soft_wrap=True)
        for gif in gifs:
            console.print(f"GIF (real | imagined | reconstructed): {gif}", highlight=False,
                          soft_wrap=True)
