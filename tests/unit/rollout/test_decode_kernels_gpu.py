"""The decode step's Triton kernels on a GPU: each against eager PyTorch, and the engine with them."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from rlkit.rollout import Completion, NativeEngine, SamplingParams

from . import _decode_kernels_check as checks
from .conftest import hf_tiny, native_copy, random_prompts

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
pytest.importorskip("triton")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm(dtype: torch.dtype) -> None:
    checks.check_add_rms_norm(dtype, "cuda")


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_kv_write(dtype: torch.dtype) -> None:
    checks.check_rope_kv_write(dtype, "cuda")


def test_rope_kv_write_masked() -> None:
    """10 head rows, Dh = 12: the kernel's tiles are larger than the data."""
    checks.check_rope_kv_write(torch.bfloat16, "cuda", heads=6, kv_heads=2, dh=12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(dtype: torch.dtype) -> None:
    checks.check_silu_mul(dtype, "cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_forward_with_kernels_equals_eager(dtype: torch.dtype) -> None:
    """Logits, greedy tokens and caches over four steps (bf16: through the flash decode path)."""
    checks.check_decode_forward(dtype, "cuda")


def _ids(outs: list[list[Completion]]) -> list[list[list[int]]]:
    return [[c.token_ids for c in group] for group in outs]


def test_engine_greedy_with_kernels_equals_without(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 engine (CUDA graphs, flash decode): greedy completions with RLKIT_TRITON=1 == =0."""
    model = native_copy(hf_tiny("qwen2", seed=31))
    prompts = random_prompts(8, seed=32, lo=1, hi=30)
    params = SamplingParams(temperature=0.0, max_tokens=20)
    outs: list[list[list[Completion]]] = []
    for flag in ("0", "1"):  # the variable is read at graph capture, so set it before the engine exists
        monkeypatch.setenv("RLKIT_TRITON", flag)
        engine: Any = NativeEngine(copy.deepcopy(model).to("cuda", torch.bfloat16), max_num_seqs=8)
        outs.append(engine.generate(prompts, params))
        assert engine.stats.graph_replays > 0 and engine._cache.reads_used_keys_only  # noqa: SLF001
    assert _ids(outs[1]) == _ids(outs[0])
    for ga, gb in zip(*outs, strict=True):
        torch.testing.assert_close(ga[0].logprobs, gb[0].logprobs, atol=2e-2, rtol=0)
