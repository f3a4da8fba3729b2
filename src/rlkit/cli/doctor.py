"""``rlkit doctor``: the environment report for bug reports (logic in ``rlkit.hardware.doctor``)."""

from __future__ import annotations

import typer

EPILOG = (
    "Examples: [bold]rlkit doctor[/], [bold]rlkit doctor --markdown > doctor.md[/] (paste it into the issue)"
)


def doctor(
    markdown: bool = typer.Option(
        False, "--markdown", "-m", help="Print Markdown tables instead of plain text."
    ),
) -> None:
    """Report versions (python, torch, CUDA/ROCm/CANN, engines), devices and Ray, and whether rlkit supports them."""
    from rlkit.hardware.doctor import collect, render_markdown, render_text
    from rlkit.rollout.registry import engine_versions

    engines = [(name, version or "not importable") for name, version in engine_versions().items()]
    report = collect(engines=engines)
    typer.echo(render_markdown(report) if markdown else render_text(report))
