"""``rlkit sft`` checkpoints through the CLI: exact resume (2 + 2 steps == 4), PATH, LoRA, merge, damage."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.models import CausalLM, init_weights, load_state_dict, load_tokenizer, save_hf, tiny_config

# fp32 on CPU, one worker. Warmup 3 with a constant rate makes the LR differ at every step, so a
# schedule that is not restored shows in actor/lr (and the schedule does not depend on total_steps).
TINY = [
    "data.synthetic_size=96",
    "data.batch_size=8",
    "sft.val_every=2",
    "actor.lr_schedule=constant",
    "actor.warmup_steps=3",
    "trainer.loggers=[jsonl]",
    "hardware.device=cpu",
]
# Wall-clock measurements differ between any two runs; everything else must not.
_UNTIMED = ("timing/", "throughput/")


def sft(out: Path, *overrides: str) -> str:
    result = CliRunner().invoke(app, ["sft", *TINY, f"trainer.out_dir={out}", *overrides])
    assert result.exit_code == 0, result.output
    return result.output


def metrics(run: Path) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(_UNTIMED)} for r in rows}


def assert_same_run(expected: Path, got: Path, steps: list[int], tol: float) -> None:
    """Equal metrics at ``steps`` and equal final weights (the ``hf/`` export of the last step)."""
    a, b = metrics(expected), metrics(got)
    assert sorted(b) == sorted(a)
    for step in steps:
        assert a[step].keys() == b[step].keys(), step
        for key, value in a[step].items():
            assert math.isclose(value, b[step][key], rel_tol=tol, abs_tol=tol), (
                step,
                key,
                value,
                b[step][key],
            )
    last = f"step_{max(a)}"
    w_a = load_state_dict(expected / "checkpoints" / last / "hf")
    w_b = load_state_dict(got / "checkpoints" / last / "hf")
    assert w_a.keys() == w_b.keys()
    for name, tensor in w_a.items():
        torch.testing.assert_close(w_b[name], tensor, atol=tol, rtol=tol, msg=name)


@pytest.fixture(scope="module")
def straight(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 steps without interruption, checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("sft_straight")
    sft(out, "trainer.total_steps=4", "trainer.save_every=2")
    return out


def test_stop_after_two_steps_and_resume_is_exact(straight: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    sft(out, "trainer.total_steps=2")  # stops after step 2 (and saves there)
    step2 = out / "checkpoints" / "step_2"
    assert {p.name for p in step2.iterdir()} >= {"manifest.json", "actor", "hf", "rng", "tokenizer"}
    assert json.loads((step2 / "trainer_state.json").read_text())["trainer"] == "sft"
    log = sft(out, "trainer.total_steps=4")  # trainer.resume=auto
    assert "resuming from" in log and "step_2" in log
    assert f"model: {out / 'checkpoints' / 'step_4' / 'hf'}" in log
    assert_same_run(straight, out, [0, 1, 2, 3, 4], 1e-6)  # step 0: validation before training
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_4"
    assert metrics(out)[3]["actor/lr"] == pytest.approx(2e-3 * 2 / 3)  # the warmup went on, not restarted


def test_finished_run_resumes_to_nothing(straight: Path, tmp_path: Path) -> None:
    run = tmp_path / "done"
    shutil.copytree(straight, run)
    before = (run / "metrics.jsonl").read_text()
    log = sft(run, "trainer.total_steps=4")
    assert "nothing left to train" in log and "step_4" in log
    assert (run / "metrics.jsonl").read_text() == before


def test_merge_of_an_sft_checkpoint_equals_its_hf_export(straight: Path, tmp_path: Path) -> None:
    step4 = straight / "checkpoints" / "step_4"
    result = CliRunner().invoke(app, ["ckpt", "merge", str(step4), "--out", str(tmp_path / "hf"), "--verify"])
    assert result.exit_code == 0, result.output
    merged, export = load_state_dict(tmp_path / "hf"), load_state_dict(step4 / "hf")
    assert merged.keys() == export.keys()
    assert all(torch.equal(merged[name], export[name]) for name in export)
    listing = CliRunner().invoke(app, ["ckpt", "ls", str(straight)])
    assert listing.exit_code == 0, listing.output
    assert "complete (latest)" in listing.output and "loss" in listing.output


def test_damaged_newest_checkpoint_is_refused_in_one_line(straight: Path, tmp_path: Path) -> None:
    run = tmp_path / "damaged"
    shutil.copytree(straight, run)
    shard = run / "checkpoints" / "step_4" / "actor" / "dcp" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    result = CliRunner().invoke(app, ["sft", *TINY, f"trainer.out_dir={run}", "trainer.total_steps=6"])
    assert result.exit_code == 2, result.output
    assert "step_4" in result.output and "__0_0.distcp" in result.output and "Traceback" not in result.output
    assert f"trainer.resume={run.resolve() / 'checkpoints' / 'step_2'}" in result.output.replace("\n", "")
    assert shard.stat().st_size == 100  # nothing touched


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "grpo", "model.path=builtin:tiny"],
            "was written by `rlkit sft`",
        ),  # RL cannot continue an SFT checkpoint
        (["sft", *TINY, "model.lora_rank=4"], "model.lora_rank was 0 in that run, this run has 4"),
    ],
    ids=["rl", "lora_rank"],
)
def test_incompatible_resume_is_refused_before_workers(
    straight: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    run = tmp_path / "other"
    shutil.copytree(straight, run)
    result = CliRunner().invoke(app, [*args, f"trainer.out_dir={run}", "trainer.total_steps=6"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_2", "step_4"]


@pytest.fixture(scope="module")
def lora_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = CausalLM(tiny_config())
    init_weights(base, seed=0)
    out = tmp_path_factory.mktemp("lora_base")
    save_hf(base, out, tokenizer=load_tokenizer("builtin:tiny"))
    return out


def test_lora_resume_from_a_path_is_exact(lora_base: Path, tmp_path: Path, ray_session: None) -> None:
    """LoRA (adapters + their optimizer state), resumed from another run's step_2 into a new folder."""
    lora = [f"model.path={lora_base}", "model.lora_rank=4", "actor.lr=1e-2", "trainer.total_steps=4"]
    straight, forked = tmp_path / "straight", tmp_path / "forked"
    sft(straight, *lora, "trainer.save_every=2")
    step2 = straight / "checkpoints" / "step_2"
    assert (step2 / "adapter" / "adapter_config.json").is_file()
    log = sft(forked, *lora, f"trainer.resume={step2}")
    assert (
        "resuming from" in log
        and f"LoRA adapter (PEFT): {forked / 'checkpoints' / 'step_4' / 'adapter'}" in log
    )
    assert_same_run(straight, forked, [0, 1, 2, 3, 4], 1e-6)  # rows 0-2 copied from the source run
    assert [p.name for p in sorted((forked / "checkpoints").glob("step_*"))] == ["step_4"]


@pytest.mark.slow
def test_resume_on_another_worker_count(lora_base: Path, tmp_path: Path, ray_session: None) -> None:
    """LoRA, 4 steps on 2 workers == 2 steps on 2 workers resumed on 1 (DCP reshards the shards)."""
    lora = [f"model.path={lora_base}", "model.lora_rank=4", "actor.lr=1e-2", "trainer.total_steps=4"]
    two, one = tmp_path / "two", tmp_path / "one"
    sft(two, *lora, "trainer.save_every=2", "hardware.devices_per_node=2")
    step2 = two / "checkpoints" / "step_2"
    assert {p.name for p in (step2 / "actor" / "dcp").glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    log = sft(one, *lora, "hardware.devices_per_node=1", f"trainer.resume={step2}")
    assert "written by 2 workers" in log
    assert_same_run(two, one, [3, 4], 1e-4)  # one rank sums in another order than two


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_and_merge_on_gpu(ray_session: None, tmp_path: Path) -> None:
    """One GPU (bf16 compute): resume matches the straight run up to kernel non-determinism; merge verifies."""
    gpu = [o for o in TINY if o != "hardware.device=cpu"] + ["hardware.device=cuda"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for out, steps in ((straight, 4), (resumed, 2), (resumed, 4)):
        result = CliRunner().invoke(
            app,
            ["sft", *gpu, f"trainer.out_dir={out}", f"trainer.total_steps={steps}", "trainer.save_every=2"],
        )
        assert result.exit_code == 0, result.output
    expected, got = metrics(straight), metrics(resumed)
    assert sorted(got) == [0, 1, 2, 3, 4]
    for step in (3, 4):
        for key in ("train/loss", "val/loss" if step == 4 else "actor/lr"):
            assert math.isclose(expected[step][key], got[step][key], rel_tol=1e-2, abs_tol=1e-2), (step, key)
    step4 = resumed / "checkpoints" / "step_4"
    result = CliRunner().invoke(app, ["ckpt", "merge", str(step4), "--out", str(tmp_path / "hf"), "--verify"])
    assert result.exit_code == 0, result.output
