"""Tiny Hugging Face configs and models of each native family, built in-process (no network)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

FAMILIES = ("llama", "qwen2", "qwen3")
VOCAB = 96


def hf_tiny_config(family: str, *, tie: bool = False, **overrides: Any) -> Any:
    """A 2-layer transformers config of ``family`` (llama with Llama-3 rope scaling, qwen2 with
    qkv bias, qwen3 with qk-norm) small enough to run in milliseconds."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    common.update(overrides)
    if family == "llama":
        # original_max_position_embeddings=16 puts head-dim frequencies in all three llama3 bands.
        rope = {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
        return LlamaConfig(rope_parameters=rope, **common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "qwen3":
        return Qwen3Config(**{"head_dim": 16, **common})
    raise ValueError(family)


def hf_tiny_model(family: str, *, tie: bool = False, seed: int = 0, **overrides: Any) -> Any:
    """A seeded random transformers causal LM in fp32 eval mode, with non-trivial norms and biases."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        hf_tiny_config(family, tie=tie, **overrides), dtype=torch.float32
    )
    with torch.no_grad():
        # HF inits norms to one and biases to zero; perturb them so a mis-mapped tensor shows up.
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", ".bias")):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_hf_model() -> Any:
    """``hf_tiny_model`` as a fixture, so test modules need not import this conftest."""
    return hf_tiny_model


@pytest.fixture
def make_hf_config() -> Any:
    return hf_tiny_config
