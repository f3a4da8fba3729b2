"""Run folders end to end: fresh folders by default, explicit resume, refusals before Ray, durable rows.

Every command runs in a temporary working directory, so the default ``runs/`` lands there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from rlkit.ckpt.lock import RunLock
from rlkit.ckpt.run_folder import read_latest_run
from rlkit.cli.app import app

TINY = [
    "data.batch_size=4",
    "actor.mini_batch_size=4",
    "rollout.n=2",
    "data.max_response_length=8",
    "data.synthetic_size=64",
    "trainer.loggers=[jsonl]",
    "trainer.val_every=0",
    "hardware.device=cpu",
]
SFT_TINY = [
    "data.synthetic_size=32",
    "data.batch_size=4",
    "sft.val_every=0",
    "trainer.loggers=[jsonl]",
    "hardware.device=cpu",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        yield cwd


def invoke(*args: str, code: int = 0) -> str:
    result: Result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def train(*overrides: str, code: int = 0) -> str:
    return invoke("train", "grpo", *TINY, *overrides, code=code)


def steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step_*"))


def test_default_folders_latest_keep_last_and_refusals(ray_session: None, workdir: Path) -> None:
    runs = workdir / "runs" / "grpo"
    log = train("trainer.total_steps=2", "trainer.save_every=1", "trainer.keep_last=0")
    first = read_latest_run(runs)
    assert first is not None and first.parent == runs.resolve() and "run folder: runs/grpo/" in log
    assert checkpoints(first) == ["step_1", "step_2"] and steps(first) == [1, 2]

    # the same command again is a new run in a new folder, not "nothing left to train"
    log = train("trainer.total_steps=1")
    second = read_latest_run(runs)
    assert second is not None and second != first and "nothing left" not in log and steps(second) == [1]

    # a resume that changes what the checkpoint depends on: one line, both ways out, nothing touched
    log = train(f"trainer.resume={first}", "trainer.total_steps=4", "data.batch_size=8", code=2)
    assert "data.batch_size was 4 in that run, this run has 8" in log
    assert "set data.batch_size=4" in log and "trainer.resume=never" in log

    # another live run holds the folder
    with RunLock.acquire(first):
        log = train(f"trainer.resume={first}", "trainer.total_steps=4", code=2)
    assert f"in use by another rlkit run: pid {os.getpid()}" in log

    # a torn last row (a killed run) is repaired; keep_last=0 from the first run still applies
    with open(first / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')
    log = train(f"trainer.resume={first}", "trainer.total_steps=4", "trainer.save_every=1", "actor.lr=2e-3")
    assert "dropped a torn last line" in log and "resuming from" in log and "actor.lr" in log
    assert steps(first) == [1, 2, 3, 4] and checkpoints(first) == ["step_1", "step_2", "step_3", "step_4"]
    assert read_latest_run(runs) == second  # a resume is not a new run

    # nothing left to train: one line, exit 0, before Ray (a Ray address nothing listens on would fail)
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    cmd = [
        sys.executable,
        "-m",
        "rlkit",
        "train",
        "grpo",
        *TINY,
        "trainer.resume=latest",
        "trainer.total_steps=1",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "is at step 1 of trainer.total_steps=1: nothing left to train" in proc.stderr
    assert "raise trainer.total_steps" in proc.stderr and steps(second) == [1]


def test_the_row_of_a_step_is_written_before_its_checkpoint(workdir: Path, ray_session: None) -> None:
    run = workdir / "unsaveable"
    run.mkdir()
    (run / "checkpoints").write_text("a file where the checkpoints folder goes: the save fails")
    result = CliRunner().invoke(
        app, ["train", "grpo", *TINY, f"trainer.out_dir={run}", "trainer.total_steps=1"]
    )
    assert result.exit_code != 0 and isinstance(result.exception, OSError)
    assert steps(run) == [1]  # the step's row made it to disk before its save was attempted


def test_sft_default_folder_and_nothing_left(ray_session: None, workdir: Path) -> None:
    log = invoke("sft", *SFT_TINY, "trainer.total_steps=1")
    run = read_latest_run(workdir / "runs" / "sft")
    assert run is not None and "run folder: runs/sft/" in log
    log = invoke("sft", *SFT_TINY, "trainer.total_steps=1", "trainer.resume=latest")
    assert "nothing left to train" in log and steps(run) == [1]
    assert f"model: {Path('runs/sft') / run.name / 'checkpoints' / 'step_1' / 'hf'}" in log
