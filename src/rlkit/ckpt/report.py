"""What ``rlkit ckpt ls`` shows: every checkpoint of a run with its status and the metrics at its step."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlkit.ckpt.layout import CheckpointInfo, checkpoints_dir, list_checkpoints, read_latest
from rlkit.ckpt.run_folder import LATEST_RUN
from rlkit.errors import UserError

# Metrics shown per checkpoint (key, column label), in this order, when the run logged them.
LS_METRICS = (
    ("reward/mean", "reward"),
    ("val/reward/mean", "val reward"),
    ("sft/loss", "loss"),
    ("val/loss", "val loss"),
)


@dataclass
class CheckpointRow:
    info: CheckpointInfo
    latest: bool
    metrics: dict[str, Any] = field(default_factory=dict)


def _run_dir(path: Path) -> Path:
    if path.name == "checkpoints" and not checkpoints_dir(path).is_dir():
        return path.parent
    return path


def _metrics_by_step(path: Path) -> dict[int, dict[str, Any]]:
    """``metrics.jsonl`` rows merged per step; unreadable lines are skipped (this is a listing)."""
    out: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            out.setdefault(row["step"], {}).update(row)
    return out


def checkpoint_rows(
    path: str | os.PathLike[str],
) -> tuple[Path, list[CheckpointRow], list[tuple[str, str]]]:
    """``(run_dir, rows oldest first, (metric, label) columns)`` for a run folder (or its ``checkpoints/``).

    Raises:
        UserError: The folder has no ``checkpoints/``.
    """
    run_dir = _run_dir(Path(path).expanduser())
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        hint = "pass a run directory (trainer.out_dir)"
        if (run_dir / LATEST_RUN).exists():  # runs/<recipe>: a folder of runs
            hint = f"{run_dir} holds runs: pass one of them, e.g. {run_dir / LATEST_RUN}"
        raise UserError(f"{run_dir} has no checkpoints/ folder", hint=hint)
    latest = read_latest(root)
    metrics = _metrics_by_step(run_dir / "metrics.jsonl")
    rows = [
        CheckpointRow(info, info.path.name == latest, metrics.get(info.step, {}))
        for info in list_checkpoints(root, include_tmp=True)
    ]
    columns = [(m, label) for m, label in LS_METRICS if any(m in r.metrics for r in rows)]
    return run_dir, rows, columns
