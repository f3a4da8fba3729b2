"""The ``rlkit`` command: a Typer app with one module per command; this module only wires them up.

User errors (:class:`rlkit.errors.UserError`, also one raised in a worker) become one red line and
exit code 2; a failed worker (:class:`rlkit.controller.WorkerError`) one line with its cause and the
path of ``RUN/error.log``, exit code 1; a stop by Ctrl-C or SIGTERM its one line and 130 or 143.
Tracebacks only with ``--debug``, which is accepted before or after the subcommand.
"""

from __future__ import annotations

import errno
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
    """Turns UserError and WorkerError into one line on stderr (tracebacks only with --debug)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Accept ``--debug`` anywhere before ``--``: it is moved in front of the subcommand."""
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[1:end]:
            args = ["--debug", *(a for a in args[:end] if a != "--debug"), *args[end:]]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if debug:
                if _is_worker_error(exc):  # a worker's UserError: its remote traceback too
                    err_console.print(_escape(exc.details()), highlight=False)  # type: ignore[attr-defined]
                raise
            line = f"[bold red]error:[/] {_escape(exc.message)}"
            if exc.hint:
                line += f" [dim]— {_escape(exc.hint)}[/]"
            err_console.print(line, highlight=False)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            message = getattr(exc, "message", None) or "interrupted"
            err_console.print(f"[yellow]{_escape(message)}[/]", highlight=False)
            ctx.exit(getattr(exc, "exit_code", 130))
        except OSError as exc:
            if debug or exc.errno not in _DISK_ERRNOS:
                raise
            from rlkit.controller.causes import describe

            err_console.print(_worker_error_line(exc, describe(exc)), highlight=False)
            ctx.exit(1)
        except Exception as exc:
            if not _is_worker_error(exc):
                raise
            if debug:
                err_console.print(_escape(exc.details()), highlight=False)  # type: ignore[attr-defined]
                raise
            err_console.print(_worker_error_line(exc), highlight=False)
            ctx.exit(1)


# Errors of the driver's own file writes that the user fixes (disk full, permissions): one line too.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def _is_worker_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a WorkerError (checked by name: importing the controller pulls in Ray)."""
    return any(c.__name__ == "WorkerError" and c.__module__.startswith("rlkit.") for c in type(exc).__mro__)


def _worker_error_line(exc: Any, text: str | None = None) -> str:
    """``error: actor.update on rank 0: <cause> — full traceback: RUN/error.log`` (``text``: the cause)."""
    line = f"[bold red]error:[/] {_escape(text or str(exc))}"
    extras = []
    if getattr(exc, "stacks_file", None):
        extras.append(f"worker stacks: {exc.stacks_file}")
    if getattr(exc, "error_log", None):
        extras.append(f"full traceback: {exc.error_log}")
    else:
        extras.append("run with --debug for the full traceback")
    return line + f" [dim]— {_escape('; '.join(extras))}[/]"


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
        launch,
        plan,
        plot,
        profile,
        profiles,
        recipes,
        report,
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
    app.command("plan", epilog=plan.EPILOG)(plan.plan)
    app.command("launch", epilog=launch.EPILOG)(launch.launch)
    app.command("report", epilog=report.EPILOG)(report.report)
    from rlkit.cli import ckpt, migrate

    app.add_typer(ckpt.app, name="ckpt")
    app.add_typer(migrate.app, name="migrate")


_register()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
