"""The vllm / server engines' pure parts (no vllm needed): log-prob split, request fields, checks."""

from __future__ import annotations

from pathlib import Path

from rlkit.rollout.base import Completion, SamplingParams
from rlkit.rollout.vllm_engine import (
    cpu_head_size_reason,
    model_len,
    repeat_greedy,
    sampling_kwargs,
    split_logprobs,
    vllm_runs_on_cpu,
)


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
