"""Partial rollouts on the native engine's CUDA path: graph-captured decode, the fused sampler,
and the host one step behind the device (the update waits for the step in flight to land)."""

from __future__ import annotations

import copy

import pytest
import torch

from rlkit.rollout import NativeEngine

from .conftest import hf_tiny, native_copy, random_prompts
from .test_partial_rollouts import PARAMS, _logprobs, generate_with_update

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
# fp32 on the GPU against fp32 on the CPU: other kernels and summation orders, not other precision.
ATOL = 1e-3


def test_an_update_mid_generation_on_the_graph_path() -> None:
    old, new = native_copy(hf_tiny("qwen2", seed=9)), native_copy(hf_tiny("qwen2", seed=10))
    prompts = random_prompts(6, seed=31)

    def build() -> NativeEngine:
        return NativeEngine(copy.deepcopy(old).to("cuda"), max_num_seqs=8)

    reference = build().generate(prompts, PARAMS)
    engine = build()
    outs = generate_with_update(engine, prompts, list(new.state_dict().items()), after_tokens=24)
    assert engine.stats.graph_replays > 0 and engine.weight_version == 1
    spanning = 0
    for prompt, group, ref_group in zip(prompts, outs, reference, strict=True):
        for c, ref in zip(group, ref_group, strict=True):
            assert c.weight_versions is not None and c.logprobs is not None and ref.logprobs is not None
            before = c.weight_versions.count(0)
            spanning += 0 < before < len(c.token_ids)
            assert c.token_ids[:before] == ref.token_ids[:before]
            got = torch.tensor(c.logprobs)
            torch.testing.assert_close(got[:before], torch.tensor(ref.logprobs[:before]), atol=1e-5, rtol=0)
            torch.testing.assert_close(
                got[:before], _logprobs(old, prompt, c.token_ids)[:before], atol=ATOL, rtol=0
            )
            torch.testing.assert_close(
                got[before:], _logprobs(new, prompt, c.token_ids)[before:], atol=ATOL, rtol=0
            )
    assert spanning > 0
