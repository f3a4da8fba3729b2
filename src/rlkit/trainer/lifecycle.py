"""How a run stops: Ctrl-C and SIGTERM, failure reports in the run folder, the resume command.

- :class:`StopSignals` turns the first SIGINT/SIGTERM into a request to stop after the current
  step (the trainer then saves a checkpoint and raises :class:`RunInterrupted`); a second signal,
  or one while no step runs, raises :class:`RunInterrupted` at once (the workers are killed, nothing
  more is saved). The driver waits on workers in short slices, so this takes effect in well under
  a second even while a stage runs.
- :func:`record_failure` writes ``RUN/error.log`` (the driver and remote tracebacks) and, after a
  deadline, ``RUN/stacks-<step>-<stage>.txt`` (every worker's Python stacks), and notes the paths
  on the exception for the CLI's one line.
- :func:`resume_command` is the command line that continues from a checkpoint.
- :func:`deadlines` resolves the ``hardware.*_timeout_s`` keys for the device a run uses.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from rlkit.config.schema import RlkitConfig
from rlkit.controller import WorkerError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

console = Console(stderr=True, soft_wrap=True, highlight=False)

# Defaults of the null deadline keys: (CPU, accelerator), in seconds.
_DEFAULT_DEADLINES = {
    "stage_timeout_s": (300.0, 1800.0),
    "worker_start_timeout_s": (300.0, 1800.0),
    "sync_timeout_s": (120.0, 600.0),
}


@dataclass(frozen=True)
class Deadlines:
    """The run's deadlines in seconds (``hardware.*_timeout_s``, nulls resolved for the device)."""

    stage_s: float
    start_s: float
    sync_s: float
    connect_s: float


def deadlines(cfg: RlkitConfig, device: str) -> Deadlines:
    """The ``hardware.*_timeout_s`` of ``cfg``, a null taking its default for ``device`` (cpu or not)."""
    hw = cfg.hardware

    def pick(key: str) -> float:
        value = getattr(hw, key)
        cpu, accelerator = _DEFAULT_DEADLINES[key]
        return float(value) if value is not None else (cpu if device == "cpu" else accelerator)

    return Deadlines(
        pick("stage_timeout_s"),
        pick("worker_start_timeout_s"),
        pick("sync_timeout_s"),
        hw.ray_connect_timeout_s,
    )


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal; the CLI prints ``message`` and exits with ``exit_code`` (128 + signal).

    A ``KeyboardInterrupt`` so that it passes every ``except Exception`` on its way out.
    ``summarised`` is True when the closing summary was already printed.
    """

    def __init__(self, message: str, exit_code: int, *, summarised: bool = False) -> None:
        super().__init__(message)
        self.message, self.exit_code, self.summarised = message, exit_code, summarised


class StopSignals:
    """SIGINT and SIGTERM handlers for one run (a context manager; the old handlers come back on exit).

    ``stepping`` is True while a step runs: the first signal then only sets :attr:`signum`, so the
    trainer stops after the step; otherwise (and on any second signal) the handler raises
    :class:`RunInterrupted` at once. While ``closing`` (the run's cleanup) signals are only noted,
    so that a third Ctrl-C cannot cut the cleanup short. Outside the main thread it installs nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stepping = False
        self.closing = False
        self.raised: RunInterrupted | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked the run to stop."""
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the first signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + (self.signum or signal.SIGINT)

    @property
    def name(self) -> str:
        """``Ctrl-C`` or ``SIGTERM``: the first signal received."""
        return _NAMES.get(signal.Signals(self.signum or signal.SIGINT), "a signal")

    def install(self) -> None:
        """Install (or re-install, after Ray set its own) the handlers; a no-op off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            old = signal.signal(sig, self._handle)
            self._old.setdefault(sig, old)

    def restore(self) -> None:
        """Put the handlers back that were there before :meth:`install`."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.restore()
        if exc is not None and self.translate(exc) is not exc:
            raise self.translate(exc) from None

    def translate(self, exc: BaseException) -> BaseException:
        """The :class:`RunInterrupted` our handler raised, for the plain KeyboardInterrupt that Ray
        raises in its place when a signal arrives while it waits in native code; else ``exc``."""
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, RunInterrupted) and self.raised:
            return self.raised
        return exc

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.closing:  # cleaning up already: an exception now would only skip the cleanup
            console.print("[yellow]stopping: shutting the workers down ...[/]")
            return
        first = self.signum is None
        if first:
            self.signum = signum
        name = _NAMES.get(signal.Signals(signum), "a signal")
        if first and self.stepping:
            console.print(
                f"[yellow]{name}: stopping after this step and saving a checkpoint "
                "(Ctrl-C again to stop at once)[/]"
            )
            return
        why = "a second signal" if not first else name
        self.raised = RunInterrupted(
            f"stopped at once by {why}: nothing more was saved",
            128 + (self.signum or signum),
        )
        raise self.raised


def record_failure(run_dir: Path, exc: BaseException, step: int) -> None:
    """Write ``run_dir/error.log`` (and a stacks file after a deadline); note the paths on ``exc``.

    Never raises: a failure report that fails (disk full) must not hide the failure itself.
    """
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if isinstance(exc, WorkerError):
            text = f"{exc.details()}\n--- driver traceback ---\n{text}"
            if exc.stacks:
                stage = f"{exc.role}.{exc.method}" if exc.role else "start"
                stacks = run_dir / f"stacks-{step}-{stage}.txt"
                stacks.write_text(exc.stacks + "\n")
                exc.stacks_file = str(stacks)
        log = run_dir / "error.log"
        log.write_text(text)
        exc.error_log = str(log)  # type: ignore[attr-defined]  # WorkerError declares it; others get it
    except Exception:  # noqa: BLE001 -- best effort, see above
        pass


def resume_command(recipe: str, checkpoint: Path, argv: list[str] | None = None) -> str:
    """``rlkit train ...`` as it was typed, with ``trainer.resume=<checkpoint>`` in place of any other.

    Args:
        recipe: The recipe, used when the process was not started as ``rlkit train`` (a library call).
        checkpoint: The checkpoint folder to continue from.
        argv: The command line (default ``sys.argv``).
    """
    args = list(sys.argv if argv is None else argv)
    if "train" in args[1:]:
        rest = args[args.index("train", 1) + 1 :]
        rest = [a for a in rest if not a.startswith(("trainer.resume=", "--debug"))]
    else:
        rest = [recipe]
    return shlex.join(["rlkit", "train", *rest, f"trainer.resume={checkpoint}"])
