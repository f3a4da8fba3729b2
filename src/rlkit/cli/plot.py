"""``rlkit plot``: PNG curves of a run's metrics."""

from __future__ import annotations

from pathlib import Path

import typer

from rlkit.logging.plot import plot_run

EPILOG = "Example: [bold]rlkit plot runs/grpo[/] (writes runs/grpo/metrics.png)"


def plot(
    run_dir: Path = typer.Argument(..., help="Run directory (holds metrics.jsonl)."),
    out: Path = typer.Option(None, "--out", "-o", help="PNG to write (default RUN_DIR/metrics.png)."),
    metrics: str = typer.Option(None, "--metrics", help="Comma-separated metric names to plot."),
) -> None:
    """Plot the main metrics of a run (reward, losses, lengths, throughput) as PNG curves."""
    path = plot_run(run_dir, out, metrics.split(",") if metrics else None)
    typer.echo(f"wrote {path}")
