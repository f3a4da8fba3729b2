"""Every RL recipe runs end to end through the CLI on the embedded default (tiny model, synthetic task)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.registry import recipe_names

TINY = [
    "trainer.total_steps=2",
    "data.batch_size=4",
    "actor.mini_batch_size=4",
    "rollout.n=2",
    "data.max_response_length=8",
    "trainer.val_every=2",
    "data.synthetic_size=64",
    "data.val_batch_size=8",
    "trainer.loggers=[jsonl]",
]


@pytest.mark.parametrize("recipe", recipe_names("train"))
def test_recipe_runs_two_steps(recipe: str, tmp_path: Path, ray_session: None) -> None:
    out = tmp_path / recipe
    result = CliRunner().invoke(app, ["train", recipe, *TINY, f"trainer.out_dir={out}"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in (
        "reward/mean",
        "timing/step_s",
        "throughput/tokens_per_s",
        "actor/pg_loss",
        "response_length/mean",
    ):
        assert key in steps[-1], key
    assert "val/reward/mean" in rows[-1]
    assert (out / "config.yaml").is_file()
    if recipe == "ppo":
        assert "critic/vf_loss" in steps[-1]


def test_train_unknown_recipe_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "grpoo"])
    assert result.exit_code == 2
    assert "unknown recipe 'grpoo'" in result.output and "grpo" in result.output


def test_gpu_profile_without_gpu_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "grpo", "hardware.device=cuda", f"trainer.out_dir={tmp_path}"])
    assert result.exit_code == 2
    assert "no CUDA device" in result.output and "Traceback" not in result.output
