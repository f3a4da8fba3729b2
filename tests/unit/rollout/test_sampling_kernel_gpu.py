"""The fused Triton sampler on a GPU: the interpreter checks at GPU sizes, and the engine with it."""

from __future__ import annotations

import pytest
import torch

from . import _sampling_kernel_check as checks
from .conftest import chisquare_pvalue

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
pytest.importorskip("triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [3001, 151936])
def test_greedy_and_logprobs(dtype: torch.dtype, vocab: int) -> None:
    checks.check_greedy_and_logprobs(dtype, "cuda", vocab=vocab)


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_frequencies(temperature: float) -> None:
    checks.check_frequencies("cuda", rows=20_000, temperature=temperature)


def test_frequencies_over_many_tokens() -> None:
    """16 tokens spread over a 5000-column row (three loop steps of one split), 40k draws, chi-square p > 0.001."""
    logits_row = torch.full((5000,), -30.0)
    hot = torch.arange(16) * 311 + 7
    logits_row[hot] = torch.linspace(-1.0, 2.0, 16)
    rows = 40_000
    tokens, _, _ = checks._sample(
        logits_row.cuda().repeat(rows, 1), torch.ones(rows), torch.full((rows,), 99), torch.arange(rows)
    )
    probs = torch.softmax(logits_row.double(), -1)
    assert bool(torch.isin(tokens.cpu(), hot).all())
    counts = torch.bincount(tokens.cpu(), minlength=5000)[hot]
    assert chisquare_pvalue(counts, probs[hot] * rows) > 1e-3


def test_frequencies_across_splits() -> None:
    checks.check_frequencies_across_splits("cuda", rows=40_000)


def test_draw_is_keyed_by_key_and_counter() -> None:
    checks.check_draw_is_keyed_by_key_and_counter("cuda")
