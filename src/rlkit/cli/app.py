"""The ``rlkit`` command: a Typer app with one module per command; this module only wires them up.

User errors (:class:`rlkit.errors.UserError`) become one red line and exit code 2, with no
traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from rlkit import __version__
from rlkit.errors import UserError

err_console = Console(stderr=True, soft_wrap=True)


class _RlkitGroup(TyperGroup):
    """Turns UserError into one line on stderr and exit code 2 (tracebacks only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            line = f"[bold red]error:[/] {_escape(exc.message)}"
            if exc.hint:
                line += f" [dim]— {_escape(exc.hint)}[/]"
            err_console.print(line, highlight=False)
            ctx.exit(2)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            ctx.exit(130)


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


app = typer.Typer(
    cls=_RlkitGroup,
    name="rlkit",
    help="rlkit: reinforcement-learning post-training of language models, from one CLI.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rlkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    ctx.obj = {"debug": debug}


def _register() -> None:
    from rlkit.cli import (
        config,
        cp,
        data,
        doctor,
        download,
        generate,
        plot,
        profile,
        profiles,
        recipes,
        sft,
        train,
    )

    app.command("train", epilog=train.EPILOG)(train.train)
    app.command("sft", epilog=sft.EPILOG)(sft.sft)
    app.command("config", epilog=config.EPILOG)(config.config)
    app.command("recipes", epilog=recipes.EPILOG)(recipes.recipes)
    app.command("profiles", epilog=profiles.EPILOG)(profiles.profiles)
    app.command("profile", epilog=profile.EPILOG)(profile.profile)
    app.command("doctor", epilog=doctor.EPILOG)(doctor.doctor)
    app.command("cp", epilog=cp.EPILOG)(cp.cp)
    app.command("data", epilog=data.EPILOG)(data.data)
    app.command("download", epilog=download.EPILOG)(download.download)
    app.command("generate", epilog=generate.EPILOG)(generate.generate)
    app.command("plot", epilog=plot.EPILOG)(plot.plot)
    from rlkit.cli import ckpt

    app.add_typer(ckpt.app, name="ckpt")


_register()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
