"""`reward.model_path`: a sequence-classification reward model scores the RL batch as a worker role."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForSequenceClassification
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.models import build_tokenizer


def save_reward_model(folder: Path) -> None:
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_grpo_scored_by_a_reward_model(tmp_path: Path, ray_session: None) -> None:
    save_reward_model(tmp_path / "rm")
    out = tmp_path / "run"
    args = [
        "train", "grpo", f"reward.model_path={tmp_path / 'rm'}", "trainer.total_steps=2", "data.batch_size=4",
        "actor.mini_batch_size=4", "rollout.n=2", "data.max_response_length=8", "trainer.val_every=0",
        "data.synthetic_size=64", "trainer.loggers=[jsonl]", f"trainer.out_dir={out}",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # a random reward model gives real-valued, varying scores (rule scores on arith would be 0 or 1)
    assert rows[-1]["reward/std"] > 0
    assert rows[-1]["reward/mean"] not in (0.0, 1.0)
