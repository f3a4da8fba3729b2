"""``--debug`` before or after the subcommand, and how the CLI prints a failed worker."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from rlkit.cli.app import _RlkitGroup, _worker_error_line, app
from rlkit.controller import WorkerError
from rlkit.controller.worker import WorkerUserError
from rlkit.errors import UserError


@pytest.mark.parametrize(
    "args",
    [
        ["--debug", "train", "no-such-recipe"],
        ["train", "no-such-recipe", "--debug"],
        ["train", "--debug", "no-such-recipe"],
    ],
)
def test_debug_anywhere_shows_the_traceback(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, UserError)  # re-raised: the traceback is shown


def test_without_debug_a_user_error_is_one_line() -> None:
    result = CliRunner().invoke(app, ["train", "no-such-recipe"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error: unknown recipe 'no-such-recipe'")
    assert "Traceback" not in result.output


def test_worker_error_line_names_the_cause_and_the_log() -> None:
    err = WorkerError("actor.update on rank 0: no space left on the device: /r/x (OSError errno 28)")
    err.error_log = "/r/error.log"
    line = _worker_error_line(err)
    assert line.startswith("[bold red]error:[/] actor.update on rank 0: no space left on the device: /r/x")
    assert "full traceback: /r/error.log" in line
    err.stacks_file = "/r/stacks-3-actor.update.txt"
    assert "worker stacks: /r/stacks-3-actor.update.txt" in _worker_error_line(err)


def test_disk_errors_of_the_driver_are_one_line_too() -> None:
    import errno

    from rlkit.controller.causes import describe

    err = OSError(errno.ENOSPC, "No space left on device", "/r/metrics.jsonl")
    line = _worker_error_line(err, describe(err))
    assert line.startswith(
        "[bold red]error:[/] no space left on the device: /r/metrics.jsonl (OSError errno 28)"
    )


def test_debug_shows_the_remote_traceback_of_a_workers_user_error() -> None:
    """A UserError raised in a worker (a damaged shard on resume) keeps its remote traceback for --debug."""
    small = typer.Typer(cls=_RlkitGroup)

    @small.callback()
    def _root(ctx: typer.Context, debug: bool = typer.Option(False, "--debug")) -> None:
        ctx.obj = {"debug": debug}

    @small.command()
    def fail() -> None:
        raise WorkerUserError("shards are damaged", "use an older one", remote_traceback="REMOTE-TB line 7")

    plain = CliRunner().invoke(small, ["fail"])
    assert plain.exit_code == 2 and "REMOTE-TB" not in plain.output
    debug = CliRunner().invoke(small, ["fail", "--debug"])
    assert isinstance(debug.exception, WorkerUserError) and "REMOTE-TB line 7" in debug.output
