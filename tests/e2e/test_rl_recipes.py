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


# recipes whose data is a real dataset run in their own smoke test (on a tiny file of the same shape)
_OWN_DATA = {"grpo_gsm8k_tools": "tests/e2e/test_grpo_gsm8k_tools.py"}


@pytest.mark.parametrize("recipe", [r for r in recipe_names("train") if r not in _OWN_DATA])
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


def _first_step(out: Path, *overrides: str) -> dict[str, float]:
    args = ["train", "grpo", *TINY, "trainer.total_steps=1", "actor.mini_batch_size=2", *overrides]
    result = CliRunner().invoke(app, [*args, f"trainer.out_dir={out}"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if "reward/mean" in r)


def test_rollout_log_probs_as_old_log_probs_match_recomputed_ones_on_cpu(
    tmp_path: Path, ray_session: None
) -> None:
    """``actor.old_log_probs=rollout`` (verl's bypass mode) skips the trainer's forward pass.

    On CPU the engine and the trainer both compute fp32 log-probs, so the two denominators differ by
    the logged gap (asserted below 1e-5); with |advantage| <= sqrt(n) for n=2 GRPO groups, the first
    step's loss can then move by a few 1e-5 at most, hence the 1e-4 bound.
    """
    recomputed = _first_step(tmp_path / "recompute", "actor.old_log_probs=recompute")
    bypassed = _first_step(tmp_path / "rollout", "actor.old_log_probs=rollout")
    assert recomputed["rollout/logprob_gap_abs"] < 1e-5
    assert "rollout/logprob_gap_abs" not in bypassed  # the gap of a tensor with itself says nothing
    assert bypassed["reward/mean"] == recomputed["reward/mean"]  # the same samples
    assert abs(bypassed["actor/pg_loss"] - recomputed["actor/pg_loss"]) < 1e-4
    assert "actor/entropy" in bypassed  # from the update's forward pass (test_actor checks its value)


def test_auto_takes_the_old_log_probs_from_a_one_pass_update(tmp_path: Path, ray_session: None) -> None:
    """``actor.old_log_probs=auto`` with one mini-batch: no old-log-prob pass, the same update, and the
    gap and entropy metrics from the update's forward (fp32 on CPU: equal to a few ulps)."""
    one_pass = "actor.mini_batch_size=4"
    recomputed = _first_step(tmp_path / "recompute", "actor.old_log_probs=recompute", one_pass)
    auto = _first_step(tmp_path / "auto", "actor.old_log_probs=auto", one_pass)
    assert "timing/old_log_prob_s" in recomputed and "timing/old_log_prob_s" not in auto
    assert auto["rollout/logprob_gap_abs"] < 1e-5
    assert auto["reward/mean"] == recomputed["reward/mean"]  # the same samples
    assert auto["actor/ppo_kl"] == 0.0  # the ratio is exactly 1
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        assert auto[key] == pytest.approx(recomputed[key], rel=1e-5, abs=1e-7), key
