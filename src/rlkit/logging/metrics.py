"""Where a run's metrics go: the console, ``metrics.jsonl``, TensorBoard, Weights & Biases, Prometheus.

One :class:`MetricsLogger` fans each step's metrics out to the backends named in
``trainer.loggers`` (``prometheus``: :mod:`rlkit.logging.prometheus`). The console shows a live progress bar (ETA, seconds per step) and a compact
line every ``trainer.log_every`` steps; ``metrics.jsonl`` gets one JSON object per step (``step``
first), flushed and fsynced before the trainer writes that step's checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rlkit.errors import UserError

_console_err = Console(stderr=True, soft_wrap=True, highlight=False)
# Metrics shown on the console line, in this order, when present.
CONSOLE_KEYS = (
    ("reward/mean", "reward"),
    ("val/reward/mean", "val"),
    ("response_length/mean", "len"),
    ("actor/pg_loss", "pg"),
    ("actor/entropy", "ent"),
    ("actor/grad_norm", "gnorm"),
    ("critic/vf_loss", "vf"),
    ("sft/loss", "loss"),
    ("val/loss", "val_loss"),
    ("timing/step_s", "s/step"),
    ("throughput/tokens_per_s", "tok/s"),
)


class Backend(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


class JsonlBackend:
    """Appends one JSON object per step, flushed and fsynced: a row is on disk when ``log`` returns.

    On resume, rows after the resumed step are dropped first. A torn last line (a run killed while
    writing it) is dropped with a warning; damage anywhere else is an error naming the line.
    """

    def __init__(self, path: Path, start_step: int = 0) -> None:
        self.path = path
        if start_step > 0 and path.is_file():
            keep = [row for row in _rows(path) if row["step"] <= start_step]
            write_rows(path, keep)
        elif start_step == 0 and path.is_file():
            path.unlink()
        self._file = path.open("a")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` with ``rows`` (one JSON object per line) atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ConsoleBackend:
    """A live progress bar plus a compact line of the main metrics per step."""

    def __init__(
        self, total_steps: int, start_step: int, every: int = 1, console: Console | None = None
    ) -> None:
        self.console = console or Console(soft_wrap=True)
        self.every = max(1, every)
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.first = start_step + 1
        self.task = self.progress.add_task("steps", total=total_steps, completed=start_step)
        self.progress.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.progress.update(self.task, completed=step)
        if step % self.every == 0 or step in (self.first, self.progress.tasks[0].total):
            parts = [f"[bold]step {step}[/]"]
            parts += [f"{label} {_fmt(metrics[key])}" for key, label in CONSOLE_KEYS if key in metrics]
            self.console.print("  ".join(parts), highlight=False)

    def close(self) -> None:
        self.progress.stop()


class TensorBoardBackend:
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UserError(
                "trainer.loggers has tensorboard but it is not installed", hint="pip install tensorboard"
            ) from exc
        self.writer = SummaryWriter(str(log_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbBackend:
    """Weights & Biases; works offline with WANDB_MODE=offline."""

    def __init__(self, run_dir: Path, project: str, name: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise UserError(
                "trainer.loggers has wandb but it is not installed", hint="pip install wandb"
            ) from exc
        self.run = wandb.init(project=project, name=name, config=config, dir=str(run_dir), resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


LOGGERS = ("console", "jsonl", "tensorboard", "wandb", "prometheus")


class MetricsLogger:
    """Sends each step's metrics to every configured backend."""

    def __init__(
        self,
        run_dir: Path,
        loggers: list[str],
        *,
        total_steps: int,
        start_step: int = 0,
        project: str = "rlkit",
        experiment: str = "run",
        config: dict[str, Any] | None = None,
        console_every: int | None = 1,
        prometheus_port: int = 9464,
        prometheus_host: str = "127.0.0.1",
        live_gauges: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        """Open the backends named in ``loggers``.

        Args:
            console_every: Print a console line every N steps (``trainer.log_every``); None picks
                :func:`log_interval`'s default for ``total_steps``.
            prometheus_port: Port of the ``prometheus`` logger's HTTP server (0: any free port).
            prometheus_host: Address it listens on.
            live_gauges: Read by the ``prometheus`` logger at every scrape (the rollout engines'
                gauges while they generate); ignored by the other loggers.
        """
        unknown = [name for name in loggers if name not in LOGGERS]
        if unknown:
            raise UserError(
                f"trainer.loggers: unknown logger {unknown[0]!r}", hint="choose from " + ", ".join(LOGGERS)
            )
        self.backends: list[Backend] = []
        if "jsonl" in loggers:
            self.backends.append(JsonlBackend(run_dir / "metrics.jsonl", start_step))
        if "tensorboard" in loggers:
            self.backends.append(TensorBoardBackend(run_dir / "tensorboard"))
        if "wandb" in loggers:
            self.backends.append(WandbBackend(run_dir, project, experiment, config or {}))
        if "prometheus" in loggers:
            from rlkit.logging.prometheus import PrometheusBackend

            prom = PrometheusBackend(
                port=prometheus_port, host=prometheus_host, run=run_dir.name, live=live_gauges
            )
            self.backends.append(prom)
            _console_err.print(f"[dim]prometheus metrics on http://{prometheus_host}:{prom.port}/metrics[/]")
        if "console" in loggers:
            every = log_interval(console_every, total_steps)
            self.backends.append(ConsoleBackend(total_steps, start_step, every=every))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for backend in self.backends:
            backend.log(step, metrics)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics file; a torn last line is skipped with a warning.

    Raises:
        UserError: A line other than the last is not a JSON object (naming it).
    """
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    rows = []
    for i, (number, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError("not a metrics row")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            if i == len(numbered) - 1:
                _console_err.print(
                    f"[yellow]{path}:{number}: dropped a torn last line (the run was killed while writing it)[/]"
                )
                break
            raise UserError(
                f"{path}:{number}: not a metrics row ({exc})", hint="the file was changed by hand or damaged"
            ) from exc
        rows.append(row)
    return rows


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` file; a missing or damaged file is a UserError naming it.

    A torn last line (a run killed while writing it) is skipped with a warning.
    """
    if not path.is_file():
        raise UserError(f"no metrics file at {path}", hint="pass a run directory written by `rlkit train`")
    return _rows(path)


def log_interval(log_every: int | None, total_steps: int) -> int:
    """``trainer.log_every``, or its default: every step up to 50 steps, else about 40 lines a run."""
    if log_every is not None:
        return log_every
    return 1 if total_steps <= 50 else math.ceil(total_steps / 40)
