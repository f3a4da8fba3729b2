"""Tiny random models for the rollout tests: a transformers model and the native copy of its weights."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rlkit.models.decoder import CausalLM, DecoderConfig

VOCAB = 96


def hf_tiny(family: str, *, seed: int = 0, vocab: int = VOCAB, tie: bool = False) -> Any:
    """A 2-layer fp32 transformers causal LM of ``family`` with seeded random weights (no eos)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    common: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
    if family == "qwen3":
        common["head_dim"] = 16
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cls(**common), dtype=torch.float32).eval()
    with torch.no_grad():  # HF inits biases to zero and norms to one; perturb so mistakes show
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", ".bias")):
                p.add_(0.1 * torch.randn_like(p))
    return model


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
