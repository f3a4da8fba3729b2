"""Seeded sampling streams: one per (seed, prompt, sample), the same on every run.

With flat logits (a zeroed ``lm_head``) every token is decided by the sampling noise alone, so the
tokens show which stream a sample drew from: sample j of two different prompts must not share one
(the old key ``seed * 1_000_003 + sample`` ignored the prompt and gave them equal tokens).
"""

from __future__ import annotations

import pytest
import torch

from rlkit.models.decoder import CausalLM
from rlkit.rollout import HFEngine, NativeEngine, SamplingParams
from rlkit.rollout.scheduler import stream_key

from .conftest import VOCAB, tiny_native


def _flat_model() -> CausalLM:
    model = tiny_native(seed=21)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def test_stream_key_depends_on_seed_prompt_and_sample() -> None:
    keys = {stream_key(s, p, j) for s in (0, 1) for p in ([1, 2], [2, 1], [1, 2, 3]) for j in (0, 1)}
    assert len(keys) == 12
    assert stream_key(5, [3, 4], 1) == stream_key(5, [3, 4], 1)
    assert all(0 <= k < 2**63 for k in keys)


@pytest.mark.parametrize("engine_cls", [NativeEngine, HFEngine])
def test_samples_of_different_prompts_draw_different_streams(engine_cls: type) -> None:
    prompts = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=3)
    engine = engine_cls(_flat_model(), max_num_seqs=8)
    outs = engine.generate(prompts, params)
    firsts = [tuple(group[0].token_ids) for group in outs]
    assert len(set(firsts)) == len(prompts), "sample 0 of different prompts shared a random stream"
    assert all(max(c.token_ids) < VOCAB for group in outs for c in group)
    again = engine_cls(_flat_model(), max_num_seqs=2).generate(prompts[::-1], params)[::-1]
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in outs]
