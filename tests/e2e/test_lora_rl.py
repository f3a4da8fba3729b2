"""GRPO of the embedded default with LoRA (``model.lora_rank=8``, native engine) through the CLI.

It trains (the adapters move the policy away from the reference, the frozen base), every push is
the trained policy (rollout/trainer log-prob gap at fp32 rounding), it resumes exactly (2 + 2 steps
== 4 steps), a changed rank is refused, and ``rlkit ckpt merge`` gives a plain Hugging Face model
whose log-probs are the trained policy's.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlkit.cli.app import app

LORA = [
    "model.lora_rank=8",
    "model.lora_alpha=16",
    "actor.lr=2e-3",
    "actor.warmup_steps=0",
    "actor.use_kl_loss=true",  # the reference: the actor's base with its adapters off
    "actor.old_log_probs=recompute",  # so the rollout/trainer gap of the merged pushes is logged
    "hardware.device=cpu",
]
# fp32 on both sides (native engine with merged weights vs the packed LoRA forward)
GAP_ATOL = 1e-4
_UNTIMED = ("timing/", "throughput/")


def train(out: Path, tiny_run: list[str], *overrides: str) -> str:
    result = CliRunner().invoke(
        app, ["train", "grpo", *tiny_run, *LORA, f"trainer.out_dir={out}", *overrides]
    )
    assert result.exit_code == 0, result.output
    return result.output


def metrics(run: Path) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(_UNTIMED)} for r in rows}


@pytest.fixture
def process_group() -> Iterator[None]:
    """A one-process gloo group in the test process (the actor role below needs one), torn down after."""
    import torch.distributed as dist

    from rlkit.training.distributed import ensure_process_group

    created = not dist.is_initialized()
    ensure_process_group()
    yield
    if created and dist.is_initialized():
        dist.destroy_process_group()


def test_lora_grpo_trains_resumes_exactly_and_merges(
    tmp_path: Path, tiny_run: list[str], ray_session: None, process_group: None
) -> None:
    straight = tmp_path / "straight"
    train(straight, tiny_run, "trainer.total_steps=4", "trainer.save_every=2")
    check_it_trained(straight)
    check_resume_is_exact(straight, tmp_path / "resumed", tiny_run)
    check_changed_rank_is_refused(straight, tmp_path / "other", tiny_run)
    check_merge(straight / "checkpoints" / "step_4", tmp_path / "hf")


def check_it_trained(straight: Path) -> None:
    rows = metrics(straight)
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[1]["actor/kl_loss"] == 0.0  # B starts at zero: the policy is its base, the reference
    assert rows[4]["actor/kl_loss"] > 0.0  # the adapters moved it
    for row in rows.values():
        assert row["rollout/logprob_gap_abs"] < GAP_ATOL, row  # the engine runs the merged trained weights
    state = json.loads((straight / "checkpoints" / "step_2" / "actor" / "state.json").read_text())
    assert state["lora"]["rank"] == 8 and "q_proj" in state["lora"]["target_modules"]
    assert not (straight / "checkpoints" / "step_2" / "ref").exists()  # no second model


def check_resume_is_exact(straight: Path, out: Path, tiny_run: list[str]) -> None:
    train(out, tiny_run, "trainer.total_steps=2")
    log = train(out, tiny_run, "trainer.total_steps=4")
    assert "resuming from" in log and "step_2" in log
    expected, got = metrics(straight), metrics(out)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        assert expected[step].keys() == got[step].keys()
        gaps = {k: (v, got[step][k]) for k, v in expected[step].items() if "logprob_gap" in k}
        for key, value in expected[step].items():
            assert math.isclose(value, got[step][key], rel_tol=1e-6, abs_tol=1e-6), (step, key, gaps)


def check_changed_rank_is_refused(straight: Path, run: Path, tiny_run: list[str]) -> None:
    shutil.copytree(straight, run)
    args = [
        "train",
        "grpo",
        *tiny_run,
        *LORA,
        "model.lora_rank=4",
        f"trainer.out_dir={run}",
        "trainer.total_steps=6",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "model.lora_rank was 8 in that run, this run has 4" in result.output.replace("\n", "")
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_2", "step_4"]


def check_merge(step4: Path, out: Path) -> None:
    """``rlkit ckpt merge`` gives a plain HF model whose log-probs are those of the trained LoRA actor."""
    from transformers import AutoModelForCausalLM

    from rlkit.ckpt import load_role_state
    from rlkit.data.batch import Batch
    from rlkit.training.actor import ActorRole

    result = CliRunner().invoke(app, ["ckpt", "merge", str(step4), "--out", str(out), "--verify"])
    assert result.exit_code == 0, result.output
    assert not list(out.glob("adapter*"))  # a plain model: no adapter files
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()

    # the trained policy: a LoRA actor restored from the checkpoint
    actor = ActorRole("builtin:tiny-arith", total_steps=1, lora_rank=8, lora_alpha=16)
    assert load_role_state(actor, step4 / "actor") is None
    gen = torch.Generator().manual_seed(0)
    p, r = 6, 5
    ids = torch.randint(3, int(merged.config.vocab_size), (4, p + r), generator=gen)
    batch = Batch(
        tensors={
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "responses": ids[:, p:],
            "response_mask": torch.ones(4, r),
        },
        meta={"temperature": 1.0},
    )
    policy = actor.compute_log_prob(batch, with_entropy=False)["old_log_probs"]
    base = actor.compute_ref_log_prob(batch)["ref_log_prob"]
    with torch.no_grad():
        logp = merged(input_ids=ids).logits.float().log_softmax(-1)[:, p - 1 : -1]
    got = logp.gather(-1, ids[:, p:, None]).squeeze(-1)
    torch.testing.assert_close(got, policy, atol=1e-4, rtol=1e-4)  # fp32, two implementations
    assert (policy - base).abs().max() > 1e-3  # and that policy is not the base model
