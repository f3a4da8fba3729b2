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


def test_a_torn_last_line_is_dropped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _log_steps(tmp_path, range(1, 4))
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 4, "reward/me')  # killed while writing row 4
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert "dropped a torn last line" in capsys.readouterr().err
    _log_steps(tmp_path, range(4, 6), start=3)  # a resume repairs the file
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    path.write_text('{"step": 1}\n{broken\n{"step": 3}\n')
    with pytest.raises(UserError, match=r"metrics\.jsonl:2: not a metrics row"):
        read_metrics(path)


KILLED_AFTER_LOG = """
import os, signal, sys
from pathlib import Path
from rlkit.logging.metrics import MetricsLogger
logger = MetricsLogger(Path(sys.argv[1]), ["jsonl"], total_steps=3)
logger.log(1, {"reward/mean": 0.5})
os.kill(os.getpid(), signal.SIGKILL)  # no close, no atexit, no buffer flush at exit
"""


def test_a_row_is_on_disk_when_log_returns(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_LOG, str(tmp_path)], check=False)
    assert proc.returncode == -9
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "reward/mean": 0.5}]


def test_console_lines_default_to_about_forty_a_run() -> None:
    from rlkit.logging.metrics import log_interval

    assert log_interval(None, 50) == 1 and log_interval(None, 400) == 10 and log_interval(None, 60) == 2
    assert log_interval(7, 400) == 7


def test_console_prints_every_nth_step_plus_first_and_last(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from rlkit.logging.metrics import ConsoleBackend

    buf = io.StringIO()
    console = ConsoleBackend(total_steps=400, start_step=0, every=10, console=Console(file=buf, width=200))
    for step in range(1, 401):
        console.log(step, {"reward/mean": 0.5})
    console.close()
    printed = [line.split()[1] for line in buf.getvalue().splitlines() if line.startswith("step ")]
    assert printed == ["1", *(str(s) for s in range(10, 401, 10))]
