"""Resume through the CLI: exact (stop at 2, resume to 4 == 4 straight steps), 2 -> 1 workers, damage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlkit.cli.app import app

TINY = [
    "data.batch_size=4",
    "actor.mini_batch_size=4",
    "rollout.n=2",
    "data.max_response_length=8",
    "data.synthetic_size=64",
    "trainer.loggers=[jsonl]",
    "hardware.device=cpu",
]
# Unseeded validation sampling draws from the workers' RNGs, which a resume must restore.
SAMPLED_VAL = ["trainer.val_every=2", "rollout.val_temperature=1.0", "data.val_batch_size=8"]
NO_VAL = "trainer.val_every=0"
# Wall-clock measurements differ between any two runs; everything else must not.
_UNTIMED = ("timing/", "throughput/")


def train(recipe: str, out: Path, *overrides: str) -> str:
    result = CliRunner().invoke(app, ["train", recipe, *TINY, f"trainer.out_dir={out}", *overrides])
    assert result.exit_code == 0, result.output
    return result.output


def metrics(run: Path) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(_UNTIMED)} for r in rows}


def assert_same_metrics(a: dict[str, float], b: dict[str, float], tol: float) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        other = b[key]
        if isinstance(value, float) and isinstance(other, float):
            assert math.isclose(value, other, rel_tol=tol, abs_tol=tol), (key, value, other)
        else:
            assert value == other, (key, value, other)


@pytest.fixture(scope="module")
def straight(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PPO (actor + critic), 4 steps without interruption, checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("straight")
    train("ppo", out, "trainer.total_steps=4", "trainer.save_every=2", *SAMPLED_VAL)
    return out


def test_stop_after_two_steps_and_resume_is_exact(straight: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    train("ppo", out, "trainer.total_steps=2", *SAMPLED_VAL)  # stops after step 2 (and saves there)
    assert [p.name for p in sorted((out / "checkpoints").glob("step_*"))] == ["step_2"]
    log = train("ppo", out, "trainer.total_steps=4", *SAMPLED_VAL)  # trainer.resume=auto
    assert "resuming from" in log and "step_2" in log
    expected, got = metrics(straight), metrics(out)
    assert sorted(got) == [0, 1, 2, 3, 4]  # step 0: validation before training
    for step in (0, 1, 2, 3, 4):
        assert_same_metrics(expected[step], got[step], 1e-6)
    assert "critic/vf_loss" in got[4] and "actor/pg_loss" in got[4] and "val/reward/mean" in got[4]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_4"


def test_resume_with_fewer_workers_and_merge_of_two_shards(ray_session: None, tmp_path: Path) -> None:
    two = tmp_path / "two"
    train("grpo", two, "trainer.total_steps=4", "trainer.save_every=2", "hardware.devices_per_node=2", NO_VAL)
    step2 = two / "checkpoints" / "step_2"
    assert {p.name for p in (step2 / "actor" / "dcp").glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    one = tmp_path / "one"
    log = train(
        "grpo", one, "trainer.total_steps=4", "hardware.devices_per_node=1", f"trainer.resume={step2}", NO_VAL
    )
    assert "written by 2 workers" in log
    expected, got = metrics(two), metrics(one)
    assert sorted(got) == [1, 2, 3, 4]  # rows 1-2 copied from the run the checkpoint came from
    for step in (3, 4):
        # one rank sums in another order than two: equal up to float rounding
        assert_same_metrics(expected[step], got[step], 1e-4)
        assert expected[step]["reward/mean"] == got[step]["reward/mean"]

    result = CliRunner().invoke(app, ["ckpt", "merge", str(step2), "--out", str(tmp_path / "hf"), "--verify"])
    assert result.exit_code == 0, result.output


def test_damaged_newest_checkpoint_stops_auto_resume(straight: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "damaged"
    shutil.copytree(straight, run)
    shard = run / "checkpoints" / "step_4" / "critic" / "dcp" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    result = CliRunner().invoke(
        app, ["train", "ppo", *TINY, f"trainer.out_dir={run}", "trainer.total_steps=6"]
    )
    assert result.exit_code == 2, result.output
    assert "step_4" in result.output and "__0_0.distcp" in result.output and "Traceback" not in result.output
    assert f"trainer.resume={run.resolve() / 'checkpoints' / 'step_2'}" in result.output.replace("\n", "")
    assert shard.stat().st_size == 100  # nothing touched


def test_finished_run_resumes_to_nothing(straight: Path) -> None:
    before = (straight / "metrics.jsonl").read_text()
    log = train("ppo", straight, "trainer.total_steps=4", *SAMPLED_VAL)
    assert "nothing left to train" in log
    assert (straight / "metrics.jsonl").read_text() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_and_merge_on_gpu(ray_session: None, tmp_path: Path) -> None:
    """bf16 on one GPU: resume matches the straight run up to GPU kernel non-determinism; merge verifies."""
    gpu = [o for o in TINY if o != "hardware.device=cpu"] + ["hardware.device=cuda", NO_VAL]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for out, steps in ((straight, 4), (resumed, 2), (resumed, 4)):
        result = CliRunner().invoke(
            app,
            [
                "train",
                "grpo",
                *gpu,
                f"trainer.out_dir={out}",
                f"trainer.total_steps={steps}",
                "trainer.save_every=2",
            ],
        )
        assert result.exit_code == 0, result.output
    expected, got = metrics(straight), metrics(resumed)
    assert sorted(got) == [1, 2, 3, 4]
    for key in ("reward/mean", "response_length/mean"):  # the first step after the resume
        assert math.isclose(expected[3][key], got[3][key], rel_tol=5e-2, abs_tol=5e-2), key
    step4 = resumed / "checkpoints" / "step_4"
    result = CliRunner().invoke(app, ["ckpt", "merge", str(step4), "--out", str(tmp_path / "hf"), "--verify"])
    assert result.exit_code == 0, result.output


def test_spin_resume_restores_the_refreshed_reference(ray_session: None, tmp_path: Path) -> None:
    """SPIN's reference is refreshed from the actor during training: it is part of the checkpoint."""
    spin = [
        "data.batch_size=4",
        "actor.mini_batch_size=4",
        "data.max_response_length=8",
        "data.synthetic_size=64",
        "trainer.loggers=[jsonl]",
        "hardware.device=cpu",
        "ref.update_every=2",
        "actor.lr=1e-3",
        NO_VAL,
    ]
    runner = CliRunner()

    def spin_train(out: Path, *overrides: str) -> None:
        args = ["train", "spin", *spin, f"trainer.out_dir={out}", *overrides]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    spin_train(straight, "trainer.total_steps=4")
    spin_train(resumed, "trainer.total_steps=2")
    step2 = resumed / "checkpoints" / "step_2"
    assert (step2 / "ref" / "dcp" / ".metadata").is_file()
    assert json.loads((step2 / "manifest.json").read_text())["roles"] == ["actor", "ref"]
    spin_train(resumed, "trainer.total_steps=4")
    expected, got = metrics(straight), metrics(resumed)
    for step in (1, 2, 3, 4):
        assert_same_metrics(expected[step], got[step], 1e-6)
    # step 3 starts from the reference refreshed after step 2: the DPO loss of equal policies
    assert math.isclose(got[3]["spin/dpo_loss"], math.log(2.0), abs_tol=1e-4)
