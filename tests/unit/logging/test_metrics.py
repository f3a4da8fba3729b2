from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.errors import UserError
from rlkit.logging.metrics import MetricsLogger, read_metrics
from rlkit.logging.plot import plot_run


def _log_steps(run: Path, steps: range, start: int = 0) -> None:
    logger = MetricsLogger(run, ["jsonl", "console"], total_steps=10, start_step=start)
    for step in steps:
        logger.log(step, {"reward/mean": step / 10, "timing/step_s": 0.5, "throughput/tokens_per_s": 100.0})
    logger.close()


def test_jsonl_rows_and_resume_truncation(tmp_path: Path) -> None:
    _log_steps(tmp_path, range(1, 6))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[0]["reward/mean"] == 0.1
    _log_steps(tmp_path, range(4, 7), start=3)  # resumed from a step-3 checkpoint
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_unknown_logger_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown logger"):
        MetricsLogger(tmp_path, ["jsonl", "mlflow"], total_steps=1)


def test_plot_writes_png(tmp_path: Path) -> None:
    _log_steps(tmp_path, range(1, 6))
    out = plot_run(tmp_path)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = CliRunner().invoke(app, ["plot", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 0 and (tmp_path / "x.png").is_file()


def test_plot_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == 2 and "no metrics file" in result.output
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "other": 1}) + "\n")
    with pytest.raises(UserError, match="none of the metrics"):
        plot_run(tmp_path)
