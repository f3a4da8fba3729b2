"""Completions -> verl's batch columns, and the trainer's recomputation of rollout log-probs."""

from __future__ import annotations

import pytest
import torch

from rlkit.rollout import Completion, NativeEngine, SamplingParams
from rlkit.rollout.tensors import completions_to_tensors

from .conftest import random_prompts, tiny_native


def test_layout_and_trainer_recomputation() -> None:
    model = tiny_native(seed=30)
    prompts = random_prompts(3, seed=31, lo=2, hi=9)
    temperature, n = 0.9, 2
    outs = NativeEngine(model, max_num_seqs=8).generate(
        prompts, SamplingParams(n=n, temperature=temperature, max_tokens=7, stop_token_ids=[5, 6, 7], seed=2)
    )
    t = completions_to_tensors(prompts, outs, pad_token_id=0, response_length=8)
    p = max(len(x) for x in prompts)
    assert t["prompts"].shape == (6, p) and t["responses"].shape == (6, 8)
    row = 3  # prompt 1, sample 1
    assert t["prompts"][row, p - len(prompts[1]) :].tolist() == prompts[1]
    ids = outs[1][1].token_ids
    assert t["responses"][row, : len(ids)].tolist() == ids and t["response_mask"][row].sum() == len(ids)
    assert torch.equal(t["attention_mask"][:, p:], t["response_mask"].long())
    assert t["position_ids"][row, p - len(prompts[1])] == 0 and t["position_ids"][row, p] == len(prompts[1])
    # What the trainer does: the token at response position t is scored by the logits at P + t - 1.
    with torch.no_grad():
        logits = model(t["input_ids"], t["attention_mask"])[:, p - 1 : -1] / temperature
    recomputed = torch.log_softmax(logits, -1).gather(2, t["responses"][..., None])[..., 0]
    mask = t["response_mask"].bool()
    torch.testing.assert_close(recomputed[mask], t["rollout_log_probs"][mask], atol=1e-5, rtol=0)


def test_rejects_ragged_groups_and_overlong_rows() -> None:
    c = Completion([1, 2], [-1.0, -1.0], None, "length")
    with pytest.raises(ValueError, match="same size"):
        completions_to_tensors([[1], [2]], [[c], [c, c]], pad_token_id=0)
    with pytest.raises(ValueError, match="exceed"):
        completions_to_tensors([[1]], [[c]], pad_token_id=0, response_length=1)
