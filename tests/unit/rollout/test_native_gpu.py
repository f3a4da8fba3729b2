"""The native engine's CUDA paths: graph-captured decode, flash decode attention, sleep/wake memory."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rlkit.rollout import Completion, NativeEngine, SamplingParams
from rlkit.rollout.kv_cache import KVCache

from .conftest import hf_tiny, native_copy, random_prompts
from .test_native import hf_greedy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _ids(outs: list[list[Completion]]) -> list[list[list[int]]]:
    return [[c.token_ids for c in group] for group in outs]


def _engine(model: Any, dtype: torch.dtype, **kwargs: Any) -> NativeEngine:
    import copy

    return NativeEngine(copy.deepcopy(model).to("cuda", dtype), max_num_seqs=8, **kwargs)


@pytest.fixture(scope="module")
def pair() -> tuple[Any, Any]:
    hf = hf_tiny("qwen2", seed=21)
    return hf, native_copy(hf)


def test_graph_decode_fp32_equals_transformers(pair: tuple[Any, Any]) -> None:
    hf, model = pair
    engine = _engine(model, torch.float32)
    prompts = random_prompts(12, seed=22, lo=1, hi=30)
    outs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=20))
    assert engine.stats.graph_replays > 0
    for prompt, group in zip(prompts, outs, strict=True):
        assert group[0].token_ids == hf_greedy(hf, prompt, 20)  # transformers on CPU, fp32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graphs_equal_eager(pair: tuple[Any, Any], dtype: torch.dtype) -> None:
    """Captured and eager decode (flash decode attention in bf16) give the same seeded samples."""
    _, model = pair
    prompts = random_prompts(10, seed=23, lo=1, hi=40)
    params = SamplingParams(n=2, temperature=1.0, top_p=0.95, max_tokens=24, seed=9)
    graphed = _engine(model, dtype)
    eager = _engine(model, dtype, cuda_graphs=False)
    a, b = graphed.generate(prompts, params), eager.generate(prompts, params)
    assert _ids(a) == _ids(b)
    if dtype == torch.bfloat16:
        assert graphed._cache is not None and graphed._cache.reads_used_keys_only  # noqa: SLF001
    for ga, gb in zip(a, b, strict=True):
        for ca, cb in zip(ga, gb, strict=True):
            torch.testing.assert_close(
                ca.logprobs, cb.logprobs, atol=2e-2 if dtype == torch.bfloat16 else 1e-4, rtol=0
            )


def test_logprobs_match_a_recomputation_bf16(pair: tuple[Any, Any]) -> None:
    _, model = pair
    engine = _engine(model, torch.bfloat16)
    prompts = random_prompts(4, seed=24)
    outs = engine.generate(prompts, SamplingParams(n=2, temperature=0.7, max_tokens=16, seed=1))
    for prompt, group in zip(prompts, outs, strict=True):
        for c in group:
            with torch.no_grad():
                logits = engine.model(torch.tensor([prompt + c.token_ids], device="cuda"))[
                    0, len(prompt) - 1 : -1
                ]
            ref = torch.log_softmax(logits.float() / 0.7, -1).gather(
                1, torch.tensor(c.token_ids, device="cuda")[:, None]
            )
            torch.testing.assert_close(torch.tensor(c.logprobs), ref[:, 0].cpu(), atol=5e-2, rtol=0)


def test_sleep_frees_memory_and_wake_restores_outputs(pair: tuple[Any, Any]) -> None:
    _, model = pair
    engine = _engine(model, torch.bfloat16, max_model_len=4096)
    prompts = random_prompts(5, seed=25)
    params = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=3)
    before = engine.generate(prompts, params)
    awake = torch.cuda.memory_allocated()
    engine.sleep()
    asleep = torch.cuda.memory_allocated()
    cfg = engine.config
    cache_bytes = (
        KVCache.bytes_per_token(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, torch.bfloat16) * 8 * 4096
    )
    assert awake - asleep >= cache_bytes
    engine.wake()
    assert _ids(engine.generate(prompts, params)) == _ids(before)


def test_update_weights_reaches_captured_graphs(pair: tuple[Any, Any]) -> None:
    _, model = pair
    other = native_copy(hf_tiny("qwen2", seed=26))
    engine = _engine(model, torch.float32)
    prompts = random_prompts(4, seed=27)
    params = SamplingParams(temperature=0.0, max_tokens=12)
    engine.generate(prompts, params)
    engine.update_weights(other.state_dict().items())
    assert _ids(engine.generate(prompts, params)) == _ids(
        _engine(other, torch.float32).generate(prompts, params)
    )


def test_flash_decode_attention_matches_sdpa() -> None:
    """Grouped-query packed flash decode == plain attention over each slot's first ``length`` keys."""
    from rlkit.rollout.kv_cache import KVCache

    heads, kv_heads, dh = 14, 2, 64
    cache = KVCache(
        1, 6, 64, kv_heads, dh, num_heads=heads, dtype=torch.bfloat16, device=torch.device("cuda")
    )
    assert cache.reads_used_keys_only
    cache.k.normal_()
    cache.v.normal_()
    lengths = torch.tensor([1, 5, 64, 33, 2, 17], device="cuda")
    q = torch.randn(6, heads, dh, device="cuda", dtype=torch.bfloat16)
    out = cache.attend(0, q, cache.decode_meta(lengths, 64))
    for row, n in enumerate(lengths.tolist()):
        k = cache.k[0, row, :n].float().repeat_interleave(heads // kv_heads, dim=1).transpose(0, 1)
        v = cache.v[0, row, :n].float().repeat_interleave(heads // kv_heads, dim=1).transpose(0, 1)
        ref = torch.nn.functional.scaled_dot_product_attention(q[row].float()[:, None, :], k, v)[:, 0, :]
        torch.testing.assert_close(out[row].float(), ref, atol=2e-2, rtol=2e-2)


def test_fused_rms_norm_rounds_like_the_decoder() -> None:
    from rlkit.models.decoder import RMSNorm
    from rlkit.rollout.forward import rms_norm

    norm = RMSNorm(896, 1e-6).to("cuda", torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_()
        x = torch.randn(64, 896, device="cuda", dtype=torch.bfloat16) * 3
        ours, theirs = rms_norm(norm, x), norm(x)
    assert (ours == theirs).float().mean() > 0.99
    torch.testing.assert_close(ours, theirs)
