"""The native engine on CPU: equal to transformers' greedy generate, and its batching invariants."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rlkit.errors import UserError
from rlkit.models.decoder import CausalLM
from rlkit.rollout import Completion, NativeEngine, RolloutEngine, SamplingParams

from .conftest import VOCAB, chisquare_pvalue, hf_tiny, native_copy, random_prompts, tiny_native


def hf_greedy(hf: Any, prompt: list[int], max_new: int, **kwargs: Any) -> list[int]:
    """transformers' greedy generate; the explicit mask keeps prompt tokens equal to the pad id visible."""
    ids = torch.tensor([prompt], device=hf.device)
    out = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new,
        min_new_tokens=max_new,
        pad_token_id=0,
        **kwargs,
    )
    return out[0, len(prompt) :].tolist()


def _ids(outs: list[list[Completion]]) -> list[list[list[int]]]:
    return [[c.token_ids for c in group] for group in outs]


@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3"])
def test_greedy_equals_transformers(family: str) -> None:
    hf = hf_tiny(family, seed=1)
    engine = NativeEngine(native_copy(hf), max_num_seqs=4)
    assert isinstance(engine, RolloutEngine)
    prompts = random_prompts(4, seed=2)
    outs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16))
    for prompt, group in zip(prompts, outs, strict=True):
        assert group[0].token_ids == hf_greedy(hf, prompt, 16)
        assert group[0].finish_reason == "length"


def test_continuous_batching_equals_one_at_a_time(qwen2_pair: tuple[Any, CausalLM]) -> None:
    """Many prompts through 3 slots (sequences leave and enter mid-flight) == each prompt alone."""
    _, model = qwen2_pair
    prompts = random_prompts(10, seed=3, lo=1, hi=20)
    params = [SamplingParams(temperature=0.0, max_tokens=4 + 3 * (i % 5)) for i in range(len(prompts))]
    batched = NativeEngine(model, max_num_seqs=3).generate(prompts, params)
    alone = NativeEngine(model, max_num_seqs=1)
    for prompt, sp, group in zip(prompts, params, batched, strict=True):
        ref = alone.generate([prompt], sp)[0][0]
        assert group[0].token_ids == ref.token_ids
        assert len(ref.token_ids) == sp.max_tokens
        torch.testing.assert_close(group[0].logprobs, ref.logprobs, atol=1e-5, rtol=0)


def test_group_larger_than_the_slots_is_split(qwen2_pair: tuple[Any, CausalLM]) -> None:
    _, model = qwen2_pair
    prompt = random_prompts(1, seed=19)[0]
    ref = NativeEngine(model).generate([prompt], SamplingParams(temperature=0.0, max_tokens=6))[0][0]
    engine = NativeEngine(model, max_num_seqs=2)
    group = engine.generate([prompt], SamplingParams(n=5, temperature=0.0, max_tokens=6))[0]
    assert [c.token_ids for c in group] == [ref.token_ids] * 5
    assert engine.stats.prefill_tokens == 3 * len(prompt)  # 2 + 2 + 1 samples


def test_logprobs_equal_a_recomputation(qwen2_pair: tuple[Any, CausalLM]) -> None:
    """Returned log-probs == log_softmax(forward logits / T) at the sampled tokens."""
    _, model = qwen2_pair
    prompts = random_prompts(3, seed=4)
    temperature = 0.8
    outs = NativeEngine(model, max_num_seqs=4).generate(
        prompts, SamplingParams(n=2, temperature=temperature, max_tokens=10, seed=0)
    )
    for prompt, group in zip(prompts, outs, strict=True):
        for c in group:
            ids = torch.tensor([prompt + c.token_ids])
            with torch.no_grad():
                logits = model(ids)[0, len(prompt) - 1 : -1]
            expected = torch.log_softmax(logits / temperature, -1).gather(
                1, torch.tensor(c.token_ids)[:, None]
            )
            torch.testing.assert_close(torch.tensor(c.logprobs), expected[:, 0], atol=1e-5, rtol=0)
            assert c.sampling_logprobs == pytest.approx(c.logprobs, abs=1e-5)  # no truncation


def test_group_shares_one_prefill_and_samples_independently() -> None:
    model = tiny_native(seed=5)
    engine = NativeEngine(model, max_num_seqs=32)
    prompts = random_prompts(3, seed=6)
    outs = engine.generate(prompts, SamplingParams(n=8, temperature=1.0, max_tokens=6))
    assert engine.stats.prefill_tokens == sum(len(p) for p in prompts)
    assert engine.stats.prefill_calls == 1
    for group in outs:
        assert len(group) == 8
        assert len({tuple(c.token_ids) for c in group}) > 4  # 96-token vocabulary: collisions are rare


def test_first_token_frequencies_match_the_model() -> None:
    """n samples of one prompt: the first token is distributed as softmax(logits / T)."""
    vocab = 12
    model = tiny_native(seed=7, vocab=vocab)
    prompt = [3, 1, 4, 1, 5]
    n, temperature = 3000, 1.5
    engine = NativeEngine(model, max_num_seqs=n)
    outs = engine.generate([prompt], SamplingParams(n=n, temperature=temperature, max_tokens=1, seed=11))
    counts = torch.bincount(torch.tensor([c.token_ids[0] for c in outs[0]]), minlength=vocab).double()
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1].double()
    expected = torch.softmax(logits / temperature, -1) * n
    assert chisquare_pvalue(counts, expected) > 1e-3


def test_top_k_limits_the_support(qwen2_pair: tuple[Any, CausalLM]) -> None:
    _, model = qwen2_pair
    prompt = [5, 6, 7]
    outs = NativeEngine(model, max_num_seqs=64).generate(
        [prompt], SamplingParams(n=64, temperature=1.0, top_k=2, max_tokens=1, seed=1)
    )
    with torch.no_grad():
        top2 = model(torch.tensor([prompt]))[0, -1].topk(2).indices.tolist()
    assert {c.token_ids[0] for c in outs[0]} == set(top2)


def test_seed_makes_samples_independent_of_batching(qwen2_pair: tuple[Any, CausalLM]) -> None:
    _, model = qwen2_pair
    prompts = random_prompts(5, seed=8)
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_tokens=8, seed=1234)
    a = NativeEngine(model, max_num_seqs=2).generate(prompts, params)
    b = NativeEngine(model, max_num_seqs=16).generate(prompts[::-1], params)[::-1]
    assert _ids(a) == _ids(b)
    other = NativeEngine(model, max_num_seqs=16).generate(
        prompts, SamplingParams(**{**vars(params), "seed": 7})
    )
    assert _ids(other) != _ids(a)


def test_update_weights_equals_loading_them() -> None:
    old, new = tiny_native(seed=9), tiny_native(seed=10)
    prompts = random_prompts(4, seed=11)
    params = SamplingParams(n=2, temperature=0.9, max_tokens=8, seed=3)
    engine = NativeEngine(old, max_num_seqs=8)
    before = engine.generate(prompts, params)
    engine.update_weights(new.state_dict().items())
    expected = NativeEngine(tiny_native(seed=10), max_num_seqs=8).generate(prompts, params)
    after = engine.generate(prompts, params)
    assert _ids(after) == _ids(expected) and _ids(after) != _ids(before)
    with pytest.raises(ValueError, match="no parameter"):
        engine.update_weights([("model.nope.weight", torch.zeros(1))])


def test_sleep_and_wake_keep_outputs(qwen2_pair: tuple[Any, CausalLM]) -> None:
    _, model = qwen2_pair
    engine = NativeEngine(model, max_num_seqs=4)
    prompts = random_prompts(3, seed=12)
    params = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=5)
    before = engine.generate(prompts, params)
    engine.sleep()
    assert engine.num_slots == 0
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(prompts, params)
    engine.wake()
    assert engine.num_slots == 4
    assert _ids(engine.generate(prompts, params)) == _ids(before)


def test_stop_tokens_end_a_completion_and_are_kept(qwen2_pair: tuple[Any, CausalLM]) -> None:
    _, model = qwen2_pair
    prompt = random_prompts(1, seed=13)[0]
    engine = NativeEngine(model, max_num_seqs=2)
    free = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12))[0][0].token_ids
    stop = free[4]
    cut = free.index(stop) + 1
    out = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[stop]))[0][
        0
    ]
    assert out.token_ids == free[:cut] and out.finish_reason == "stop"
    assert len(out.logprobs or []) == cut
    ignored = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    assert ignored[0][0].token_ids == free


def test_model_eos_is_the_default_stop_token() -> None:
    model = tiny_native(seed=14)
    prompt = [1, 2, 3]
    free = NativeEngine(model).generate([prompt], SamplingParams(temperature=0.0, max_tokens=10))[0][0]
    model.config.eos_token_id = free.token_ids[2]
    engine = NativeEngine(model)
    out = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=10))[0][0]
    assert out.token_ids == free.token_ids[: free.token_ids.index(free.token_ids[2]) + 1]
    ignored = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))[0][0]
    assert ignored.token_ids == free.token_ids and ignored.finish_reason == "length"


def test_stop_strings_truncate_after_the_completing_token() -> None:
    from rlkit.models import build_tokenizer

    tokenizer = build_tokenizer()
    model = tiny_native(seed=15, vocab=320)
    engine = NativeEngine(model, tokenizer=tokenizer, max_num_seqs=4)
    prompts = [tokenizer.encode(t) for t in ("hello", "stop here", "abc")]
    free = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    printable = [(i, t) for i, g in enumerate(free) for t in g[0].token_ids[1:] if 33 <= t < 127]
    assert printable, "the random model produced no ASCII token to stop on"
    which, token = printable[0]
    stop = chr(token)
    out = engine.generate(
        [prompts[which]], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, stop=[stop])
    )[0][0]
    ids = free[which][0].token_ids
    cut = next(k for k in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:k]))
    assert out.token_ids == ids[:cut] and out.finish_reason == "stop"
    with pytest.raises(ValueError, match="tokenizer"):
        NativeEngine(model).generate([[1]], SamplingParams(stop=["x"]))


def test_max_model_len_caps_generation_and_rejects_long_prompts(qwen2_pair: tuple[Any, CausalLM]) -> None:
    _, model = qwen2_pair
    engine = NativeEngine(model, max_num_seqs=2, max_model_len=16)
    out = engine.generate([[1] * 10], SamplingParams(temperature=0.0, max_tokens=50))[0][0]
    assert len(out.token_ids) == 6 and out.finish_reason == "length"
    with pytest.raises(UserError, match="max_model_len"):
        engine.generate([[1] * 16], SamplingParams(max_tokens=1))


def test_kv_cache_token_budget_limits_slots(qwen2_pair: tuple[Any, CausalLM]) -> None:
    _, model = qwen2_pair
    engine = NativeEngine(model, max_num_seqs=8, max_model_len=64, kv_cache_tokens=200)
    outs = engine.generate(random_prompts(5, seed=16), SamplingParams(n=2, temperature=0.0, max_tokens=5))
    assert engine.num_slots == 3 and all(len(c.token_ids) == 5 for g in outs for c in g)
    with pytest.raises(UserError, match="KV-cache budget"):
        NativeEngine(model, max_model_len=64, kv_cache_tokens=10).generate([[1]], SamplingParams())


def test_repetition_penalty_equals_transformers(qwen2_pair: tuple[Any, CausalLM]) -> None:
    hf, model = qwen2_pair
    prompts = random_prompts(3, seed=17)
    params = SamplingParams(temperature=0.0, max_tokens=12, repetition_penalty=1.8)
    outs = NativeEngine(model, max_num_seqs=2).generate(prompts, params)
    for prompt, group in zip(prompts, outs, strict=True):
        assert group[0].token_ids == hf_greedy(hf, prompt, 12, repetition_penalty=1.8)


def test_bad_inputs(qwen2_pair: tuple[Any, CausalLM]) -> None:
    _, model = qwen2_pair
    engine = NativeEngine(model, max_num_seqs=4)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate([[VOCAB]], SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], SamplingParams())
    with pytest.raises(ValueError, match="2 SamplingParams for 1 prompts"):
        engine.generate([[1]], [SamplingParams(), SamplingParams()])
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=0)
    with pytest.raises(TypeError, match="native"):
        NativeEngine(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    assert engine.generate([], SamplingParams()) == []


def test_fused_projections_keep_the_model_intact() -> None:
    """The engine's q/k/v and gate/up fusion changes no parameter name, value or forward output."""
    model = tiny_native(seed=18)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        logits = model(ids)
    engine = NativeEngine(model)
    engine.generate([[1, 2]], SamplingParams(max_tokens=2))
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.data_ptr() == attn.q_proj.weight.data_ptr() + attn.q_proj.weight.nbytes
    with torch.no_grad():
        torch.testing.assert_close(model(ids), logits, atol=0, rtol=0)
    model.to(torch.float64).to(torch.float32)  # new storage: the engine must notice and re-fuse
    out = engine.generate([[1, 2]], SamplingParams(temperature=0.0, max_tokens=6))
    assert out == NativeEngine(tiny_native(seed=18)).generate(
        [[1, 2]], SamplingParams(temperature=0.0, max_tokens=6)
    )
