"""``rlkit profile --torch`` end to end: a 2-step run that writes one Chrome trace per worker.

Needs the trainer side of the hw patch (/work/notes/hw.patch: the ``trainer.profile`` and
``trainer.profile_steps`` keys, the ``profiler`` role in the worker group, start/stop in the
step loop); it is skipped until the schema has the keys, and must pass once the patch is in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.config.fields import schema_fields

pytestmark = pytest.mark.skipif(
    "trainer.profile" not in schema_fields(), reason="needs trainer.profile/profile_steps (the hw patch)"
)


def test_torch_profile_of_two_steps(tmp_path: Path, ray_session: None, tiny_run: list[str]) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["profile", "--torch", "--steps", "1-2", "train", "grpo", "actor.old_log_probs=recompute", *tiny_run]
        + [f"trainer.out_dir={out}"],
    )
    assert result.exit_code == 0, result.output
    traces = sorted((out / "profile").glob("torch_rank*_steps1-2.pt.trace.json"))
    assert [t.name for t in traces] == ["torch_rank0_steps1-2.pt.trace.json"]  # the cpu profile: one worker
    names = {e.get("name") for e in json.loads(traces[0].read_text())["traceEvents"]}
    assert {"rollout.generate", "actor.compute_log_prob", "actor.update"} <= names
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "reward/mean" in s] == [1, 2]


def test_profile_steps_past_the_run_is_one_line(tmp_path: Path, tiny_run: list[str]) -> None:
    result = CliRunner().invoke(
        app,
        ["profile", "--torch", "--steps", "5-6", "train", "grpo", *tiny_run, f"trainer.out_dir={tmp_path}"],
    )
    assert (
        result.exit_code == 2 and "the run has 2 steps" in result.output and "Traceback" not in result.output
    )
