"""``rlkit migrate verl``: a verl launch script or YAML config -> the rlkit command (and what did not map)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Convert another toolkit's config into an rlkit command.", no_args_is_help=True)

VERL_EPILOG = (
    "Example: [bold]rlkit migrate verl examples/grpo_trainer/run_qwen2-7b.sh[/] (prints the rlkit "
    "command, then every verl key it left out and why; the key table is docs/coming-from-verl.md)"
)


@app.command("verl", epilog=VERL_EPILOG)
def verl(
    source: Path = typer.Argument(
        ...,
        help="A verl launch script (python3 -m verl.trainer.main_ppo key=value ...) or a verl YAML config.",
    ),
) -> None:
    """Print the rlkit command for a verl script or YAML: recipe + overrides, and every key not mapped, with why."""
    from rlkit.migrate.verl import migrate, report_lines

    typer.echo("\n".join(report_lines(migrate(source))))
