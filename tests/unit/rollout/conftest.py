"""Tiny random models for the rollout tests: a transformers model and the native copy of its weights."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rlkit.models.decoder import CausalLM, DecoderConfig
from rlkit.models.tiny_foreign import tiny_foreign_model

VOCAB = 96


def hf_tiny(family: str, *, seed: int = 0, vocab: int = VOCAB, tie: bool = False) -> Any:
    """A 2-layer fp32 transformers causal LM of ``family`` with seeded random weights (no eos).

    The project's one tiny-model builder (:func:`rlkit.models.tiny_foreign.tiny_foreign_model`).
    """
    return tiny_foreign_model(family, seed=seed, vocab_size=vocab, eos_token_id=None, tie_word_embeddings=tie)


def native_copy(hf_model: Any) -> CausalLM:
    """The native ``CausalLM`` holding exactly the weights of a transformers model."""
    model = CausalLM(DecoderConfig.from_hf(hf_model.config.to_dict()))
    model.load_state_dict(hf_model.state_dict(), strict=False)
    return model.eval()


def tiny_native(seed: int = 0, *, vocab: int = VOCAB, family: str = "qwen2") -> CausalLM:
    return native_copy(hf_tiny(family, seed=seed, vocab=vocab))


def random_prompts(
    count: int, *, seed: int = 0, lo: int = 2, hi: int = 12, vocab: int = VOCAB
) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (count,), generator=g).tolist()
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def chisquare_pvalue(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's chi-square goodness-of-fit p-value (df = bins - 1), without scipy."""
    counts, expected = counts.double(), expected.double()
    expected = expected * (counts.sum() / expected.sum())
    stat = ((counts - expected) ** 2 / expected).sum()
    df = torch.tensor((counts.numel() - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(df, stat / 2))


@pytest.fixture(scope="module")
def qwen2_pair() -> tuple[Any, CausalLM]:
    hf = hf_tiny("qwen2")
    return hf, native_copy(hf)
