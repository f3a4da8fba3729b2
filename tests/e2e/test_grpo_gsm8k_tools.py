"""The GSM8K + code-interpreter recipe, smoke-tested with the tiny tool-use model: ``rlkit data
gsm8k`` over a small GSM8K-shaped file, then two steps of ``rlkit train grpo_gsm8k_tools`` with the
sandboxed interpreter loaded from the recipe's tools YAML."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rlkit.cli.app import app

QUESTIONS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = 7\n#### 7"),
    ("A box holds 12 eggs. How many eggs are in 5 boxes?", "12 * 5 = 60\n#### 60"),
    ("Sam had 20 dollars and spent 8. How many dollars are left?", "20 - 8 = 12\n#### 12"),
    ("Each of 6 kids gets 3 pencils. How many pencils in all?", "6 * 3 = 18\n#### 18"),
]


def test_grpo_gsm8k_tools_runs_two_steps_with_the_tiny_model(tmp_path: Path, ray_session: None) -> None:
    raw = tmp_path / "gsm8k.jsonl"
    rows = [{"question": q, "answer": a} for q, a in QUESTIONS * 3]
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tmp_path / "data"
    runner = CliRunner()
    made = runner.invoke(app, ["data", "gsm8k", "--source", str(raw), "--out", str(data)])
    assert made.exit_code == 0, made.output
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train", "grpo_gsm8k_tools", "model.path=builtin:tiny-tools",
            f"data.train_files=[{data / 'train.parquet'}]", f"data.val_files=[{data / 'test.parquet'}]",
            "data.batch_size=2", "actor.mini_batch_size=2", "rollout.n=2", "data.max_prompt_length=640",
            "data.max_response_length=96", "rollout.multi_turn.max_turns=2", "trainer.total_steps=2",
            "trainer.val_every=0", "trainer.save_every=0", "actor.lr=1e-4", f"trainer.out_dir={out}",
            "trainer.loggers=[jsonl]",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        assert s["agent/num_turns/mean"] >= 1.0 and s["agent/template_mismatch/count"] == 0.0
        assert 0.0 <= s["reward/mean"] <= 1.0
    config = (out / "config.yaml").read_text()
    assert "gsm8k_code_interpreter.yaml" in config and "use_kl_loss: true" in config
