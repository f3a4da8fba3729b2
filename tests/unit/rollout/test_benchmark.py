"""``benchmarks/rollout.py --tiny`` runs on CPU and prints its table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "rollout.py"


def test_tiny_benchmark_prints_a_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("rollout_benchmark", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    results = module.main(["--tiny", "--engines", "native,hf"])
    out = capsys.readouterr().out
    assert {r.engine for r in results} == {"rlkit native", "rlkit hf", "transformers"}
    assert all(r.tokens == 8 * 16 for r in results)  # 8 x n=1 and 2 x n=4, 16 new tokens each
    for key in ("device", "torch", "commit", "HBM floor", "decode forward", "tokens/s"):
        assert key in out
