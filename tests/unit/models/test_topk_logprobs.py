"""Chunked top-k and support log-probs (rlkit.models.topk) against the naive full-vocabulary computation."""

from __future__ import annotations

import pytest
import torch

from rlkit.models.topk import token_logprobs_at, token_topk_logprobs


def _inputs(seed: int = 0, n: int = 11, d: int = 8, v: int = 37):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=gen),
        torch.randn(v, d, generator=gen),
        torch.randint(0, v, (n,), generator=gen),
    )


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_topk_matches_naive(chunk: int) -> None:
    hidden, weight, labels = _inputs()
    logp, top, ids = token_topk_logprobs(hidden, weight, labels, 5, temperature=0.7, chunk_tokens=chunk)
    naive = torch.log_softmax(hidden @ weight.T / 0.7, -1)
    assert torch.allclose(logp, naive.gather(-1, labels[:, None]).squeeze(-1), atol=1e-5)
    ref_top, ref_ids = naive.topk(5, -1)
    assert torch.allclose(top, ref_top, atol=1e-5) and torch.equal(ids, ref_ids)
    with pytest.raises(ValueError, match="top-k"):
        token_topk_logprobs(hidden, weight, labels, 38)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_logprobs_at_support_match_naive_in_value_and_gradient(chunk: int) -> None:
    hidden, weight, _ = _inputs(1)
    ids = torch.randint(0, weight.shape[0], (hidden.shape[0], 4), generator=torch.Generator().manual_seed(2))
    h1, w1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    ours = token_logprobs_at(h1, w1, ids, chunk_tokens=chunk)
    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    naive = torch.log_softmax(h2 @ w2.T, -1).gather(-1, ids)
    probe = torch.randn_like(naive)
    (ours * probe).sum().backward()
    (naive * probe).sum().backward()
    assert torch.allclose(ours, naive, atol=1e-5)
    assert h1.grad is not None and h2.grad is not None and w1.grad is not None and w2.grad is not None
    assert torch.allclose(h1.grad, h2.grad, atol=1e-5) and torch.allclose(w1.grad, w2.grad, atol=1e-5)


def test_sum_pi_squared_matches_naive() -> None:
    from rlkit.models.topk import token_sum_pi_squared

    hidden, weight, _ = _inputs(3)
    ours = token_sum_pi_squared(hidden, weight, temperature=1.3, chunk_tokens=4)
    assert torch.allclose(ours, torch.softmax(hidden @ weight.T / 1.3, -1).square().sum(-1), atol=1e-6)
