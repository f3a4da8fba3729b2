"""GRPO trains end to end on architectures the native decoder does not run, through the hf engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.models.tiny_foreign import FOREIGN_ARCHS, save_tiny_foreign

# One architecture by default (Gemma-2: soft-capped logits on both sides); the others are the same
# path with other transformers classes, and the engine contract suite generates with all four.
DEFAULT_ARCH = "gemma2"
ARCH_PARAMS = [
    pytest.param(arch, marks=() if arch == DEFAULT_ARCH else pytest.mark.slow) for arch in FOREIGN_ARCHS
]


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_grpo_trains_through_the_hf_engine(
    arch: str, tmp_path: Path, ray_session: None, tiny_run: list[str]
) -> None:
    model = save_tiny_foreign(arch, tmp_path / arch)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", "grpo", f"model.path={model}", *tiny_run, f"trainer.out_dir={out}"]
    )
    assert result.exit_code == 0, result.output
    assert "rollout on the hf engine" in result.output  # the opening summary names the engine
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["rollout"]["engine"] == "hf"  # auto, resolved on the driver
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in steps if "reward/mean" in row]
    assert [row["step"] for row in steps] == [1, 2]
    for row in steps:
        # the rollout/trainer gap of the same fp32 weights: summation order only
        assert row["rollout/logprob_gap_abs"] < 1e-4, row


def test_native_engine_on_another_architecture_is_one_line(tmp_path: Path) -> None:
    model = save_tiny_foreign("phi3", tmp_path / "phi3")
    result = CliRunner().invoke(
        app,
        [
            "train",
            "grpo",
            f"model.path={model}",
            "rollout.engine=native",
            f"trainer.out_dir={tmp_path / 'r'}",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "rollout.engine=native cannot run this model" in result.output
    assert "rollout.engine=auto or hf" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_grpo_trains_the_embedded_default_through_the_hf_engine(
    tmp_path: Path, ray_session: None, tiny_run: list[str]
) -> None:
    """``rollout.engine=hf`` on the built-in model (rebuilt as its transformers class, same weights)."""
    out = tmp_path / "run"
    # recompute: the embedded default's bypass mode reuses the engine's log-probs and logs no gap
    args = ["train", "grpo", "rollout.engine=hf", "actor.old_log_probs=recompute", *tiny_run]
    result = CliRunner().invoke(app, [*args, f"trainer.out_dir={out}"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["rollout"]["engine"] == "hf"
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in steps if "reward/mean" in row]
    assert [row["step"] for row in steps] == [1, 2]
    for row in steps:
        assert row["rollout/logprob_gap_abs"] < 1e-4, row
