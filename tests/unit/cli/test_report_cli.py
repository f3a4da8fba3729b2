"""`rlkit report`'s output rules (as every writing command: nothing replaced unasked) and errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rlkit.cli.app import app


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.5}) + "\n")
    return run


def test_default_page_is_replaced_and_out_needs_force(tmp_path: Path) -> None:
    run = _run(tmp_path)
    runner = CliRunner()
    for _ in range(2):  # RUN/report.html is rlkit's own file: written again without --force
        result = runner.invoke(app, ["report", str(run)])
        assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert "no sample traces" in page and "<svg" in page and "no checkpoints" in page
    out = tmp_path / "mine.html"
    out.write_text("keep me")
    result = runner.invoke(app, ["report", str(run), "--out", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output and out.read_text() == "keep me"
    result = runner.invoke(app, ["report", str(run), "--out", str(out), "--force"])
    assert result.exit_code == 0 and out.read_text().startswith("<!DOCTYPE html>")


def test_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no run folder" in result.output
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output
    result = runner.invoke(app, ["report", str(_run(tmp_path)), "--out", str(tmp_path / "r.txt")])
    assert result.exit_code == 2 and "must be an .html file" in result.output
    assert "Traceback" not in result.output
