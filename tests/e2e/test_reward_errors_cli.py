"""`rlkit train` with reward files that misbehave: one line each, from the CLI, with exit code 2.

A file that hangs at import is reported while the run is set up (no step runs); a reward that
returns NaN with ``reward.on_error=raise`` stops the run at the first step, naming the sample.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rlkit.cli.app import app

TINY = [
    "trainer.total_steps=1", "data.batch_size=4", "actor.mini_batch_size=4", "rollout.n=2",
    "data.max_response_length=8", "trainer.val_every=0", "trainer.val_before_train=false",
    "data.synthetic_size=64", "trainer.loggers=[jsonl]",
]  # fmt: skip


def test_a_reward_file_that_hangs_at_import_stops_the_run_before_any_step(tmp_path: Path) -> None:
    reward = tmp_path / "hangs.py"
    reward.write_text(
        "import time\ntime.sleep(3600)\n"
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 1.0\n"
    )
    out = tmp_path / "run"
    args = ["train", "grpo", *TINY, f"trainer.out_dir={out}", f"reward.custom.path={reward}"]
    result = CliRunner().invoke(app, [*args, "reward.import_timeout_s=1"])
    assert result.exit_code == 2, result.output
    # the run folder it opened is named first (information); the failure itself is one line
    lines = [
        line for line in result.output.splitlines() if line.strip() and not line.startswith("run folder:")
    ]
    assert len(lines) == 1 and "did not finish importing within 1 s" in lines[0], result.output
    assert "hangs.py:2 `time.sleep(3600)`" in lines[0]
    metrics = out / "metrics.jsonl"
    assert not metrics.exists() or not metrics.read_text().strip()  # no step ran


def test_on_error_raise_names_the_sample(tmp_path: Path, ray_session: None) -> None:
    reward = tmp_path / "nan.py"
    reward.write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return float('nan')\n"
    )
    out = tmp_path / "run"
    args = ["train", "grpo", *TINY, f"trainer.out_dir={out}", f"reward.custom.path={reward}"]
    result = CliRunner().invoke(app, [*args, "reward.on_error=raise", "reward.num_workers=1"])
    assert result.exit_code == 2, result.output
    assert "reward.on_error=raise: sample 0 (data_source 'arith') returned NaN (7 more samples failed)" in (
        result.output
    )
    assert "Traceback" not in result.output
    metrics = out / "metrics.jsonl"
    assert not metrics.exists() or not [json.loads(line) for line in metrics.read_text().splitlines()]
