"""The Triton decode-attention kernel against masked SDPA, under Triton's CPU interpreter.

``TRITON_INTERPRET=1`` has to be set before the kernel is imported, so the checks (in
``_decode_attention_check.py``) run once in a subprocess and each check is reported here as a test.
The choice of decode path outside the interpreter is tested in-process.
"""

from __future__ import annotations

import pytest
import torch

from rlkit.errors import UserError
from rlkit.rollout.kv_cache import KVCache, decode_path_for

from ._decode_attention_check import CHECKS
from ._interpreter import interpreter_results

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def results(triton_interpreter: None) -> dict[str, str]:
    return interpreter_results("_decode_attention_check")


@pytest.mark.parametrize("name", list(CHECKS))
def test_kernel_matches_masked_sdpa(results: dict[str, str], name: str) -> None:
    assert results.get(name) == "ok", results.get(name, "not run")


def test_cpu_without_the_interpreter_uses_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("RLKIT_DECODE_ATTN", raising=False)
    cache = KVCache(1, 3, 8, 2, 16, num_heads=4, dtype=torch.bfloat16, device=CPU)
    assert cache.decode_path == "sdpa" and not cache.reads_used_keys_only
    meta = cache.decode_meta(torch.tensor([1, 8, 5]), 8)
    assert meta.mask is not None and meta.used is None


@pytest.mark.parametrize("value", ["flash", "SDPA", "auto", ""])
def test_decode_attn_override_is_accepted(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RLKIT_DECODE_ATTN", value)
    assert decode_path_for(CPU, torch.float32, 64) == "sdpa"


def test_unknown_decode_attn_override_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLKIT_DECODE_ATTN", "flashinfer")
    with pytest.raises(UserError, match="RLKIT_DECODE_ATTN"):
        decode_path_for(CPU, torch.bfloat16, 64)
