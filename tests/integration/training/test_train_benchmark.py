"""Smoke test of benchmarks/train.py: the --tiny run completes on the CPU and prints its table."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "train.py"


def test_tiny_benchmark_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = runpy.run_path(str(SCRIPT))
    out = tmp_path / "train.json"
    results = bench["main"](["--tiny", "--warmup", "0", "--steps", "1", "--json", str(out)])
    assert [r.name for r in results] == ["rlkit", "transformers"]
    assert all(r.tokens_per_s > 0 and r.mfu > 0 for r in results)
    table = capsys.readouterr().out
    assert "tokens/s" in table and "MFU" in table and "torch" in table
    saved = json.loads(out.read_text())
    assert saved["header"]["model"] == "tiny" and len(saved["results"]) == 2
