"""The decode step's Triton kernels against the eager decode step, under Triton's CPU interpreter.

``TRITON_INTERPRET=1`` has to be set before the kernels are imported, so the checks (in
``_decode_kernels_check.py``) run once in a subprocess and each check is reported here as a test.
"""

from __future__ import annotations

import pytest
import torch

from rlkit.rollout.kv_cache import KVCache

from ._decode_kernels_check import CHECKS, DH, H, K
from ._interpreter import interpreter_results


@pytest.fixture(scope="module")
def results(triton_interpreter: None) -> dict[str, str]:
    return interpreter_results("_decode_kernels_check")


@pytest.mark.parametrize("name", list(CHECKS))
def test_kernels_match_the_eager_decode_step(results: dict[str, str], name: str) -> None:
    assert results.get(name) == "ok", results.get(name, "not run")


def test_packed_attention_equals_attention() -> None:
    """``pack_queries`` lays q head j * G + g of row b at (b * G + g, j); ``attend_packed`` undoes it."""
    cache = KVCache(1, 3, 8, K, DH, num_heads=H, dtype=torch.float32, device=torch.device("cpu"))
    cache.k.normal_()
    cache.v.normal_()
    q = torch.randn(3, H, DH)
    packed = cache.pack_queries(q)
    group = H // K
    for b in range(3):
        for g in range(group):
            for j in range(K):
                assert torch.equal(packed[b * group + g, j], q[b, j * group + g])
    meta = cache.decode_meta(torch.tensor([1, 8, 5]), 8)
    torch.testing.assert_close(cache.attend_packed(0, packed, meta), cache.attend(0, q, meta), atol=0, rtol=0)
