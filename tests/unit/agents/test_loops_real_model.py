"""The loops on a real tiny model (``builtin:tiny-arith``) with the native and hf engines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlkit.agents.interactions import Gsm8kInteraction, load_interactions
from rlkit.agents.loops import MultiTurnSettings
from rlkit.agents.rollouts import run_rollouts
from rlkit.data.batch import Batch
from rlkit.models import load_causal_lm
from rlkit.rollout.base import SamplingParams
from rlkit.rollout.registry import build_engine
from rlkit.trainer.rollout_batch import completions_to_batch, trajectories_to_batch

from ._helpers import TOK, row

MODEL = "builtin:tiny-arith"
# fp32 both ways: the engine decodes token by token with a KV cache, the check runs one full pass;
# the same products summed in other orders differ by ~1e-6 relative, far below this.
LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_causal_lm(MODEL)


def _rows() -> list[dict]:
    return [row("12+34="), row("7*8="), row("100-1=")]


@pytest.mark.parametrize("engine_name", ["native", "hf"])
def test_single_turn_through_the_batcher_is_the_direct_engine_call(model, engine_name) -> None:
    engine = build_engine(engine_name, model, max_num_seqs=16, tokenizer=TOK)
    rows = _rows()
    params = SamplingParams(n=3, temperature=1.0, max_tokens=24, seed=11)
    direct = engine.generate([r["prompt_ids"] for r in rows], params)
    groups, info = run_rollouts(
        engine,
        rows,
        params,
        agent="single_turn",
        tokenizer=TOK,
        settings=MultiTurnSettings(max_response_length=24),
    )
    assert info["agent/engine_calls"] == 1
    for d_group, t_group in zip(direct, groups, strict=True):
        for d, t in zip(d_group, t_group, strict=True):
            assert (
                t.response_ids == d.token_ids
                and t.logprobs == d.logprobs
                and t.loss_mask == [1] * len(d.token_ids)
            )
    prompts = _prompt_batch(rows)
    old = completions_to_batch(prompts, direct, pad_id=256, max_response_length=24)
    new = trajectories_to_batch(prompts, groups, pad_id=256, max_response_length=24)
    assert sorted(old.keys()) == sorted(new.keys())
    for key in old.keys():
        if isinstance(old[key], torch.Tensor):
            assert torch.equal(old[key], new[key]), key


def _prompt_batch(rows: list[dict]) -> Batch:
    width = max(len(r["prompt_ids"]) for r in rows)
    prompts = torch.full((len(rows), width), 256, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        prompts[i, width - len(r["prompt_ids"]) :] = torch.tensor(r["prompt_ids"])
        mask[i, width - len(r["prompt_ids"]) :] = 1
    import numpy as np

    extra = np.array([dict(r["extra_info"]) for r in rows], dtype=object)
    return Batch(
        tensors={"prompts": prompts, "prompt_attention_mask": mask}, non_tensors={"extra_info": extra}
    )


@pytest.mark.parametrize("engine_name", ["native", "hf"])
def test_an_interaction_drives_real_multi_turn_trajectories(model, engine_name, tmp_path: Path) -> None:
    """A "try again" user who is never satisfied: every trajectory runs to max_turns, and the
    model's log-probs over the whole trajectory, recomputed in one pass, are the rollout's."""
    engine = build_engine(engine_name, model, max_num_seqs=16, tokenizer=TOK)
    rows = [
        dict(r, extra_info={"interaction_kwargs": {"name": "gsm8k", "ground_truth": "-1"}}) for r in _rows()
    ]
    settings = MultiTurnSettings(max_turns=3, max_response_length=200)
    groups, _ = run_rollouts(
        engine, rows, SamplingParams(n=2, max_tokens=200, seed=5), agent="tool", tokenizer=TOK,
        settings=settings, interactions={"gsm8k": Gsm8kInteraction({"retry_message": "Wrong, again."})},
    )  # fmt: skip
    trajectories = [t for g in groups for t in g]
    assert sum(t.finish_reason == "max_turns" for t in trajectories) >= len(trajectories) // 2
    for traj in trajectories:
        assert not traj.template_mismatch
        users = [m for m in traj.messages if m["role"] == "user"][1:]
        if traj.finish_reason == "length":
            continue
        assert traj.num_turns == 3 and traj.finish_reason == "max_turns" and len(users) == 2
        assert all(u["content"] == "Wrong, again." for u in users)
        ids = torch.tensor([traj.context_ids])
        with torch.no_grad():
            logits = model(ids, torch.ones_like(ids)).float()
        logp = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
        start = len(traj.prompt_ids) - 1
        got = logp[start : start + len(traj.response_ids)]
        mask = torch.tensor(traj.loss_mask, dtype=torch.bool)
        assert torch.allclose(got[mask], torch.tensor(traj.logprobs)[mask], atol=LOGPROB_ATOL)
        assert torch.all(torch.tensor(traj.logprobs)[~mask] == 0)


def test_the_verl_interaction_file_layout_loads(tmp_path: Path) -> None:
    path = tmp_path / "interaction.yaml"
    path.write_text(
        "interaction:\n  - name: gsm8k\n    class_name: verl.interactions.gsm8k_interaction.Gsm8kInteraction\n"
        "    config: {retry_message: again}\n"
    )
    loaded = load_interactions(str(path))
    assert isinstance(loaded["gsm8k"], Gsm8kInteraction) and loaded["gsm8k"].retry_message == "again"
