"""The embedded default learns: `rlkit train grpo` with no other argument raises its reward.

Issue #7's check, run in CI: on a 2-core CPU the 300 steps take about 4-5 minutes, and the mean training
reward of its last fifth of steps must beat that of its first fifth by at least 0.2 (rewards in
[0, 1]). The only argument given is where to write the run.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rlkit.cli.app import app


def test_rlkit_train_grpo_with_no_argument_learns(tmp_path: Path, ray_session: None) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "grpo", f"trainer.out_dir={out}"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/mean"] for r in rows if "reward/mean" in r]
    fifth = len(rewards) // 5
    first, last = sum(rewards[:fifth]) / fifth, sum(rewards[-fifth:]) / fifth
    print(f"embedded default: {len(rewards)} steps, reward first fifth {first:.3f}, last fifth {last:.3f}")
    assert last - first >= 0.2, f"first fifth {first:.3f}, last fifth {last:.3f}"
