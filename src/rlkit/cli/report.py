"""``rlkit report``: one self-contained HTML page of a run (curves, sample traces, checkpoints, config)."""

from __future__ import annotations

from pathlib import Path

import typer

from rlkit.errors import UserError
from rlkit.outputs import check_new_file

EPILOG = (
    "Example: [bold]rlkit report runs/grpo/latest[/] (writes runs/grpo/latest/report.html; "
    "open it in any browser, offline)"
)


def report(
    run_dir: Path = typer.Argument(..., help="Run directory (holds metrics.jsonl, traces/, checkpoints/)."),
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default RUN_DIR/report.html)."),
    max_samples: int = typer.Option(2000, "--max-samples", min=1, help="Newest sample traces to include."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
) -> None:
    """Write one HTML page of a run: curves, a searchable table of sample traces, checkpoints, config."""
    from rlkit.logging.report import write_report

    if out is not None:
        if out.suffix.lower() not in (".html", ".htm"):
            raise UserError(f"--out {out} must be an .html file", hint="e.g. --out report.html")
        check_new_file(out, force=force)  # RUN_DIR/report.html, the default, is rlkit's own: replaced
    path = write_report(run_dir, out, max_samples=max_samples)
    typer.echo(f"wrote {path}")
