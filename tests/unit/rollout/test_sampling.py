"""Batched sampling: truncation equals transformers' warpers, frequencies match softmax(logits / T)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rlkit.rollout.sampling import RowParams, apply_repetition_penalty, sample_tokens, truncate

from .conftest import chisquare_pvalue

V = 50


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 2.0


def _hf_support(logits: torch.Tensor, warper: object) -> torch.Tensor:
    return torch.isfinite(warper(torch.zeros(1, 1, dtype=torch.long), logits.clone()))  # type: ignore[operator]


@pytest.mark.parametrize("k", [1, 3, 17, V])
def test_top_k_matches_transformers(k: int) -> None:
    logits = _logits(4)
    ours = truncate(logits, torch.full((4,), k), None, None)
    assert torch.equal(torch.isfinite(ours), _hf_support(logits, TopKLogitsWarper(k)))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999])
def test_top_p_matches_transformers(p: float) -> None:
    logits = _logits(4, seed=1)
    ours = truncate(logits, None, torch.full((4,), p), None)
    assert torch.equal(torch.isfinite(ours), _hf_support(logits, TopPLogitsWarper(p)))


@pytest.mark.parametrize("min_p", [0.01, 0.2, 0.7])
def test_min_p_matches_transformers(min_p: float) -> None:
    logits = _logits(4, seed=2)
    ours = truncate(logits, None, None, torch.full((4,), min_p))
    assert torch.equal(torch.isfinite(ours), _hf_support(logits, MinPLogitsWarper(min_p)))


def test_per_row_parameters_and_order() -> None:
    """Each row its own k / p / min-p; top-k then top-p then min-p, as transformers chains them."""
    logits = _logits(3, seed=3)
    top_k = torch.tensor([5, -1, 8])
    top_p = torch.tensor([0.8, 0.5, 1.0])
    min_p = torch.tensor([0.0, 0.1, 0.3])
    ours = torch.isfinite(truncate(logits, top_k, top_p, min_p))
    for row in range(3):
        x = logits[row : row + 1].clone()
        ids = torch.zeros(1, 1, dtype=torch.long)
        if top_k[row] > 0:
            x = TopKLogitsWarper(int(top_k[row]))(ids, x)
        if top_p[row] < 1:
            x = TopPLogitsWarper(float(top_p[row]))(ids, x)
        if min_p[row] > 0:
            x = MinPLogitsWarper(float(min_p[row]))(ids, x)
        assert torch.equal(ours[row], torch.isfinite(x[0])), row


def test_repetition_penalty_matches_transformers() -> None:
    logits = _logits(2, seed=4)
    seen_ids = torch.tensor([[3, 7, 7, 20], [0, 1, 2, 49]])
    seen = torch.zeros(2, V, dtype=torch.bool).scatter_(1, seen_ids, True)
    ours = apply_repetition_penalty(logits, seen, torch.tensor([1.3, 1.3]))
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(seen_ids, logits.clone())
    torch.testing.assert_close(ours, theirs)


def _draw(logits: torch.Tensor, params: RowParams, n: int, seed: int) -> torch.Tensor:
    rows = logits.expand(n, -1).contiguous()
    noise = torch.empty_like(rows).exponential_(generator=torch.Generator().manual_seed(seed))
    expanded = RowParams(
        **{
            k: (v.expand(n, *v.shape[1:]) if isinstance(v, torch.Tensor) else v)
            for k, v in vars(params).items()
        }
    )
    return sample_tokens(rows, expanded, noise)[0]


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.7])
def test_frequencies_match_softmax(temperature: float) -> None:
    logits = torch.randn(1, 8, generator=torch.Generator().manual_seed(5))
    n = 20000
    tokens = _draw(logits, RowParams(temperature=torch.tensor([temperature])), n, seed=6)
    expected = torch.softmax(logits[0].double() / temperature, -1) * n
    counts = torch.bincount(tokens, minlength=8).double()
    assert chisquare_pvalue(counts, expected) > 1e-3


def test_truncated_frequencies_renormalise() -> None:
    """With top-k, sampled tokens follow the renormalised distribution over the kept tokens."""
    logits = torch.randn(1, 8, generator=torch.Generator().manual_seed(7))
    params = RowParams(temperature=torch.tensor([1.0]), top_k=torch.tensor([3]))
    tokens = _draw(logits, params, 20000, seed=8)
    kept = logits[0].topk(3).indices
    assert set(tokens.unique().tolist()) <= set(kept.tolist())
    probs = torch.softmax(logits[0, kept].double(), -1) * 20000
    counts = torch.bincount(tokens, minlength=8)[kept].double()
    assert chisquare_pvalue(counts, probs) > 1e-3


def test_skipping_passes_changes_nothing() -> None:
    """``divide=False`` / ``any_greedy=False`` are exact shortcuts when the rows allow them."""
    logits = _logits(4, seed=11)
    noise = torch.empty_like(logits).exponential_(generator=torch.Generator().manual_seed(12))
    ones = RowParams(temperature=torch.ones(4))
    fast = RowParams(temperature=torch.ones(4), divide=False, any_greedy=False)
    for a, b in zip(
        sample_tokens(logits, ones, noise.clone()), sample_tokens(logits, fast, noise.clone()), strict=True
    ):
        torch.testing.assert_close(a, b)


def test_logprobs_are_policy_and_sampling_logprobs_truncated() -> None:
    logits = _logits(3, seed=9)
    params = RowParams(temperature=torch.tensor([0.7, 0.0, 1.2]), top_k=torch.tensor([4, 4, -1]))
    noise = torch.empty_like(logits).exponential_(generator=torch.Generator().manual_seed(10))
    tokens, logprobs, sampling = sample_tokens(logits, params, noise)
    temps = torch.tensor([0.7, 1.0, 1.2])[:, None]
    policy = torch.log_softmax(logits / temps, -1).gather(1, tokens[:, None])[:, 0]
    torch.testing.assert_close(logprobs, policy)
    assert tokens[1] == logits[1].argmax() and sampling[1] == 0.0  # greedy row: a point mass
    top4 = truncate(logits[:1] / 0.7, torch.tensor([4]), None, None)
    torch.testing.assert_close(sampling[0], torch.log_softmax(top4, -1)[0, tokens[0]])
    torch.testing.assert_close(sampling[2], logprobs[2])  # no truncation on row 2
