"""DAPO, SPIN and SPPO through the CLI: two steps each on the embedded default, checking what makes
each recipe itself (dynamic sampling counts, the reference refresh, the SPPO loss)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.hardware import device as hw

TINY = [
    "trainer.total_steps=2",
    "data.batch_size=4",
    "actor.mini_batch_size=4",
    "data.max_response_length=8",
    "trainer.val_every=0",
    "data.synthetic_size=64",
    "trainer.loggers=[jsonl]",
]

# The tiny random model never solves arithmetic; a reward that varies with the response lets the
# group filter and the SPPO targets see something other than all-equal scores.
PARITY_REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return float(len(solution_str) % 2)
"""


def run(recipe: str, out: Path, *overrides: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, ["train", recipe, *TINY, f"trainer.out_dir={out}", *overrides])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    return steps


def parity_reward(tmp_path: Path) -> str:
    path = tmp_path / "parity.py"
    path.write_text(PARITY_REWARD)
    return f"reward.custom.path={path}"


def test_dapo_fills_the_batch_with_informative_groups(tmp_path: Path, ray_session: None) -> None:
    steps = run("dapo", tmp_path / "dapo", "rollout.n=2", parity_reward(tmp_path))
    for row in steps:
        assert row["gen/prompts_drawn"] == 4 * row["gen/rounds"]
        assert row["gen/prompts_kept"] <= row["gen/prompts_drawn"]
        assert row["gen/prompts_kept"] + row["dapo/prompts_topped_up"] >= 4
        assert row["reward/overlong_penalty_mean"] < 0  # every response reaches the 8-token limit
        assert "actor/pg_clipfrac" in row


def test_spin_trains_on_reference_pairs_and_refreshes_its_reference(
    tmp_path: Path, ray_session: None
) -> None:
    # a large step size: without the refresh, step 2's pairs would already have a clear margin
    steps = run("spin", tmp_path / "spin", "ref.update_every=1", "actor.lr=1e-3")
    for row in steps:
        assert row["spin/chosen_score"] == 1.0  # the reference response is the correct answer
        assert "timing/ref_sync_s" in row and "actor/pg_loss" in row
    # step 1 starts from ref == actor; after the refresh step 2 does too: the DPO loss is log 2
    assert math.isclose(steps[0]["spin/dpo_loss"], math.log(2.0), abs_tol=1e-4)
    assert math.isclose(steps[1]["spin/dpo_loss"], math.log(2.0), abs_tol=1e-4)
    assert abs(steps[1]["spin/reward_margin"]) < 1e-4


def test_sppo_regresses_log_ratios_on_centred_rewards(tmp_path: Path, ray_session: None) -> None:
    steps = run("sppo", tmp_path / "sppo", "rollout.n=4", "actor.mini_batch_size=2", parity_reward(tmp_path))
    for row in steps:
        assert "actor/log_ratio_mean" in row and "actor/preference_mean" in row
        assert abs(row["advantages/mean"]) < 1.0


@pytest.mark.slow
def test_spin_refresh_with_two_sharded_workers(tmp_path: Path, ray_session: None) -> None:
    """The reference keeps each rank's shard of the actor's full weights: still exactly the actor."""
    steps = run(
        "spin", tmp_path / "spin2", "ref.update_every=1", "actor.lr=1e-3", "hardware.devices_per_node=2"
    )
    assert abs(steps[1]["spin/reward_margin"]) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(hw.device_type() != "cuda", reason="needs a CUDA GPU")
@pytest.mark.parametrize("recipe", ["dapo", "spin", "sppo"])
def test_recipes_on_gpu(recipe: str, tmp_path: Path, ray_session: None) -> None:
    extra = {"dapo": ["rollout.n=2"], "spin": ["ref.update_every=1"], "sppo": ["rollout.n=4"]}[recipe]
    steps = run(recipe, tmp_path / recipe, "hardware.device=cuda", *extra)
    if recipe == "spin":
        # bf16 reference weights against the actor's fp32 master weights: equal up to rounding
        assert abs(steps[1]["spin/reward_margin"]) < 0.05
