"""Sample traces of a run: ``RUN/traces/step_NNNNNN.parquet``, one file per traced step.

Each file holds a sample of that step's rollouts (:data:`TRACE_SCHEMA`): prompt and response as
decoded text and token ids, reward, advantage, lengths, finish reason and the gap between the
rollout engine's and the trainer's log-probs. A file is written to a temporary name, fsynced and
renamed: a run killed while writing leaves at most a ``.tmp`` file that readers ignore, never a
torn step file. The files of steps a run is about to repeat (after the step it resumes from, or
all of them for a fresh start in a used folder) are moved to ``RUN/archive/<time>/`` before the run
starts (:func:`rlkit.ckpt.resume.prepare_run_dir`), as its checkpoints are.

The ``trajectory`` column is for multi-turn runs: a JSON list of the trajectory's messages (tool
calls and tool results included); null for single-turn rollouts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from rlkit.errors import UserError

_console_err = Console(stderr=True, soft_wrap=True, highlight=False)

TRACE_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("row", pa.int64()),
        ("uid", pa.string()),
        ("data_source", pa.string()),
        ("prompt", pa.string()),
        ("response", pa.string()),
        ("ground_truth", pa.string()),
        ("prompt_ids", pa.list_(pa.int64())),
        ("response_ids", pa.list_(pa.int64())),
        ("reward", pa.float64()),
        ("advantage", pa.float64()),
        ("prompt_length", pa.int64()),
        ("response_length", pa.int64()),
        ("finish_reason", pa.string()),
        ("logprob_gap_mean", pa.float64()),
        ("logprob_gap_max", pa.float64()),
        ("trajectory", pa.string()),
    ]
)
"""Columns of a trace file (``trajectory``: JSON messages of a multi-turn rollout, else null)."""

_STEP_FILE = re.compile(r"^step_(\d+)\.parquet$")


def traces_dir(run_dir: Path) -> Path:
    """``RUN/traces``."""
    return run_dir / "traces"


def trace_files(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete trace file of a run, by step."""
    folder = traces_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


class TraceWriter:
    """Writes one parquet file per traced step, within a size bound for the whole folder.

    Args:
        run_dir: The run folder.
        every: Trace every N steps (0 = off).
        max_mb: Stop writing traces (one warning) once ``RUN/traces`` holds this many MiB.
        start_step: The step the run resumes after (0 = a fresh run): later files, which the run
            folder's preparation has already archived, must not be mixed in (any left are removed).
    """

    def __init__(self, run_dir: Path, *, every: int, max_mb: float, start_step: int = 0) -> None:
        self.folder = traces_dir(run_dir)
        self.every = every
        self.max_bytes = int(max_mb * 2**20)
        self._full = False
        for step, path in trace_files(run_dir):
            if step > start_step:
                path.unlink()
        for stale in self.folder.glob(".*.tmp-*") if self.folder.is_dir() else ():
            stale.unlink()
        self._bytes = sum(p.stat().st_size for _, p in trace_files(run_dir))

    def wants(self, step: int) -> bool:
        """Whether ``step`` is traced."""
        return self.every > 0 and step % self.every == 0 and not self._full

    def write(self, step: int, columns: dict[str, list[Any]]) -> Path | None:
        """Write ``columns`` (names of :data:`TRACE_SCHEMA`, ``step`` and ``trajectory`` optional).

        Returns:
            The file written, or None when the size bound was reached.
        """
        if self._bytes >= self.max_bytes:
            if not self._full:
                _console_err.print(
                    f"[yellow]{self.folder}: trace folder reached trainer.trace_max_mb="
                    f"{self.max_bytes / 2**20:g}; no more traces this run[/]"
                )
            self._full = True
            return None
        rows = len(columns["row"])
        full = {"step": [step] * rows, "trajectory": [None] * rows, **columns}
        table = pa.table({name: full[name] for name in TRACE_SCHEMA.names}, schema=TRACE_SCHEMA)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step_{step:06d}.parquet"
        tmp = self.folder / f".{path.name}.tmp-{os.getpid()}"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._bytes += path.stat().st_size
        return path


def read_traces(run_dir: Path, *, max_rows: int | None = None) -> list[dict[str, Any]]:
    """Every trace row of a run (oldest step first); an unreadable file is skipped with a warning.

    Args:
        max_rows: Keep only the newest rows beyond this many (None: all).
    """
    rows: list[dict[str, Any]] = []
    for _, path in reversed(trace_files(run_dir)):
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            _console_err.print(f"[yellow]{path}: skipped an unreadable trace file ({exc})[/]")
            continue
        rows[:0] = table.to_pylist()
        if max_rows is not None and len(rows) >= max_rows:
            return rows[-max_rows:]
    return rows


def require_run_dir(run_dir: Path, command: str) -> None:
    """A UserError unless ``run_dir`` is a run folder (holds ``config.yaml`` or ``metrics.jsonl``)."""
    if not run_dir.is_dir():
        raise UserError(f"no run folder at {run_dir}", hint="pass a run directory written by `rlkit train`")
    if not (run_dir / "metrics.jsonl").is_file() and not (run_dir / "config.yaml").is_file():
        if (run_dir / "latest").exists():
            raise UserError(
                f"{run_dir} holds runs, not one run",
                hint=f"pass one of them, e.g. rlkit {command} {run_dir / 'latest'}",
            )
        raise UserError(
            f"{run_dir} is not a run folder (no metrics.jsonl or config.yaml)",
            hint="pass a run directory written by `rlkit train`",
        )
