"""Tiny transformers models of architectures the native decoder does not run (tests, benchmarks).

Each is built in-process from its transformers config class (2 layers, hidden size 64, the built-in
byte tokenizer's vocabulary), so no network is needed: Qwen3-MoE (routed experts), Phi-3 (fused
qkv / gate-up projections), Gemma-2 (logit and attention soft-capping, sliding-window layers) and
Mistral (sliding-window attention).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rlkit.models.tokenizer import BUILTIN_EOS_ID, BUILTIN_VOCAB_SIZE

FOREIGN_ARCHS = ("qwen3_moe", "phi3", "gemma2", "mistral")
_VOCAB = -(-BUILTIN_VOCAB_SIZE // 64) * 64


def tiny_foreign_config(
    arch: str, *, vocab_size: int = _VOCAB, eos_token_id: int | None = BUILTIN_EOS_ID
) -> Any:
    """A 2-layer transformers config of ``arch`` (one of :data:`FOREIGN_ARCHS`)."""
    from transformers import Gemma2Config, MistralConfig, Phi3Config, Qwen3MoeConfig

    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(
            **common, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32
        )
    if arch == "phi3":
        return Phi3Config(**common)
    if arch == "gemma2":
        # a low logit cap so that soft-capping changes the log-probs visibly
        return Gemma2Config(
            **{**common, "tie_word_embeddings": True},
            head_dim=16,
            final_logit_softcapping=3.0,
            attn_logit_softcapping=20.0,
            sliding_window=8,
        )
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=8)
    raise ValueError(f"unknown tiny architecture {arch!r}; one of {FOREIGN_ARCHS}")


def tiny_foreign_model(arch: str, *, seed: int = 0, **config: Any) -> Any:
    """A seeded fp32 transformers model of ``arch`` in eval mode (norms perturbed so mistakes show)."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_foreign_config(arch, **config), dtype=torch.float32)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save_tiny_foreign(arch: str, out: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a tiny ``arch`` model folder (safetensors + config.json + the built-in tokenizer)."""
    from rlkit.models.tokenizer import load_tokenizer

    folder = Path(out)
    model = tiny_foreign_model(arch, seed=seed)
    model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer("builtin:tiny").save_pretrained(folder)
    return folder
