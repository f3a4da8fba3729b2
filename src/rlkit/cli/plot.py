"""``rlkit plot``: PNG curves of a run's metrics."""

from __future__ import annotations

from pathlib import Path

import typer

from rlkit.errors import UserError
from rlkit.logging.plot import plot_run
from rlkit.outputs import check_new_file

EPILOG = "Example: [bold]rlkit plot runs/grpo/latest[/] (writes runs/grpo/latest/metrics.png)"


def plot(
    run_dir: Path = typer.Argument(..., help="Run directory (holds metrics.jsonl)."),
    out: Path = typer.Option(None, "--out", "-o", help="PNG to write (default RUN_DIR/metrics.png)."),
    metrics: str = typer.Option(None, "--metrics", help="Comma-separated metric names to plot."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
) -> None:
    """Plot the main metrics of a run (reward, losses, lengths, throughput) as PNG curves."""
    if out is not None:
        if out.suffix.lower() != ".png":
            raise UserError(f"--out {out} must be a .png file", hint="e.g. --out curves.png")
        check_new_file(out, force=force)  # RUN_DIR/metrics.png, the default, is rlkit's own: replaced
    path = plot_run(run_dir, out, metrics.split(",") if metrics else None)
    typer.echo(f"wrote {path}")
