"""The vllm / server engines' pure parts (no vllm needed): checksums, log-prob split, request fields."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlkit.rollout.base import Completion, SamplingParams
from rlkit.rollout.vllm_engine import (
    WeightSyncError,
    check_checksums,
    checksum_names,
    cpu_head_size_reason,
    model_len,
    repeat_greedy,
    sampling_kwargs,
    split_logprobs,
    tensor_checksums,
    vllm_runs_on_cpu,
)

NAMES = [
    "model.embed_tokens.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.qkv_proj.weight",
    "model.layers.1.input_layernorm.weight",
    "model.layers.1.post_attention_layernorm.weight",
    "model.layers.10.post_attention_layernorm.weight",
    "model.norm.weight",
]


def test_checksum_names_pick_embeddings_and_the_last_layers_norms() -> None:
    assert checksum_names(NAMES) == [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "model.layers.10.post_attention_layernorm.weight",
    ]
    assert "lm_head.weight" in checksum_names([*NAMES, "lm_head.weight"])


def test_checksums_match_themselves_and_catch_a_stale_tensor() -> None:
    gen = torch.Generator().manual_seed(0)
    new = [(n, torch.randn(64, 8, generator=gen)) for n in NAMES]
    names = checksum_names(NAMES)
    expected = tensor_checksums(new, names)
    assert expected.keys() == set(names)
    # the same values summed in another order (a transposed copy): within the float64 tolerance
    check_checksums(expected, tensor_checksums([(n, t.t().contiguous()) for n, t in new], names), 3)
    stale = dict(new)
    stale["model.norm.weight"] = stale["model.norm.weight"] + 1e-3
    with pytest.raises(WeightSyncError, match="v3: .*model.norm.weight.*did not take the new weights"):
        check_checksums(expected, tensor_checksums(stale.items(), names), 3)
    with pytest.raises(WeightSyncError, match="checksum None"):
        check_checksums(expected, {}, 3)


def test_split_logprobs_follows_the_native_semantics() -> None:
    lp = [-0.5, -1.0]
    assert split_logprobs(lp, SamplingParams(temperature=0.0)) == (lp, [0.0, 0.0])
    assert split_logprobs(lp, SamplingParams(temperature=0.7)) == (lp, lp)
    for truncated in (dict(top_k=5), dict(top_p=0.9), dict(min_p=0.1), dict(repetition_penalty=1.1)):
        assert split_logprobs(lp, SamplingParams(**truncated)) == (None, lp)
    assert split_logprobs(None, SamplingParams()) == (None, None)


def test_sampling_kwargs_stop_tokens() -> None:
    defaults = [256, 258]
    assert sampling_kwargs(SamplingParams(), defaults)["stop_token_ids"] == defaults
    assert sampling_kwargs(SamplingParams(ignore_eos=True), defaults)["stop_token_ids"] == []
    fields = sampling_kwargs(SamplingParams(stop_token_ids=[7], ignore_eos=True, logprobs=False), defaults)
    assert fields["stop_token_ids"] == [7] and fields["ignore_eos"] is True and fields["logprobs"] is None


def test_greedy_requests_sample_once_and_repeat() -> None:
    """vLLM refuses n > 1 when greedy: one completion is asked for and repeated n times."""
    greedy = SamplingParams(n=3, temperature=0.0, max_tokens=2)
    assert sampling_kwargs(greedy, [])["n"] == 1
    assert sampling_kwargs(SamplingParams(n=3, max_tokens=2), [])["n"] == 3
    one = Completion([4, 5], [-0.1, -0.2], [0.0, 0.0], "length")
    many = repeat_greedy([one], greedy)
    assert [c.token_ids for c in many] == [[4, 5]] * 3 and many[0] is not many[1]
    assert repeat_greedy([one], SamplingParams(n=1, temperature=0.0)) == [one]


def test_cpu_head_size_and_model_len(tmp_path: Path) -> None:
    import json

    config = {"num_attention_heads": 4, "hidden_size": 64, "max_position_embeddings": 512}
    if vllm_runs_on_cpu():
        assert "head size 16" in str(cpu_head_size_reason(config))
    assert cpu_head_size_reason({**config, "head_dim": 32}) is None
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_len(str(tmp_path), 520) == 512 and model_len(str(tmp_path), 100) == 100


def test_a_weight_sync_error_reaches_the_user_as_one_line() -> None:
    """What the controller reports for a worker's WeightSyncError (rlkit.controller.causes.describe)."""
    from rlkit.controller.causes import describe

    with pytest.raises(WeightSyncError) as info:
        check_checksums({"model.norm.weight": [1.0, 2.0]}, {"model.norm.weight": [1.5, 2.0]}, 3)
    try:
        raise RuntimeError("actor call failed") from info.value
    except RuntimeError as wrapped:
        line = describe(wrapped)
    assert "\n" not in line and line.startswith("WeightSyncError: weight push v3")
    assert line.endswith("the engine did not take the new weights")
