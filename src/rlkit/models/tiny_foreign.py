"""Tiny transformers models, built in-process (tests, benchmarks): the one builder of the project.

Each is built from its transformers config class (2 layers, hidden size 64, the built-in byte
tokenizer's vocabulary unless told otherwise), so no network is needed. The architectures the
native decoder does not run (:data:`FOREIGN_ARCHS`): Qwen3-MoE (routed experts), Phi-3 (fused
qkv / gate-up projections), Gemma-2 (logit and attention soft-capping, sliding-window layers) and
Mistral (sliding-window attention); and the native family (:data:`NATIVE_ARCHS`: Llama, Qwen2,
Qwen3) as transformers models, the reference the native code is compared with. Any config field
can be overridden (e.g. ``head_dim=32``, which vLLM's CPU attention needs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rlkit.models.tokenizer import BUILTIN_EOS_ID, BUILTIN_VOCAB_SIZE

FOREIGN_ARCHS = ("qwen3_moe", "phi3", "gemma2", "mistral")
NATIVE_ARCHS = ("llama", "qwen2", "qwen3")
_VOCAB = -(-BUILTIN_VOCAB_SIZE // 64) * 64


def tiny_foreign_config(
    arch: str, *, vocab_size: int = _VOCAB, eos_token_id: int | None = BUILTIN_EOS_ID, **overrides: Any
) -> Any:
    """A 2-layer transformers config of ``arch`` (:data:`FOREIGN_ARCHS` or :data:`NATIVE_ARCHS`).

    ``overrides`` replace any field (``tie_word_embeddings``, ``head_dim``, ``num_attention_heads``, ...).
    """
    from transformers import (
        Gemma2Config,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
        Qwen3MoeConfig,
    )

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
    # a low logit cap (Gemma-2) so that soft-capping changes the log-probs visibly
    per_arch: dict[str, tuple[Any, dict[str, Any]]] = {
        "qwen3_moe": (
            Qwen3MoeConfig,
            dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
        ),
        "phi3": (Phi3Config, {}),
        "gemma2": (
            Gemma2Config,
            dict(
                tie_word_embeddings=True,
                head_dim=16,
                final_logit_softcapping=3.0,
                attn_logit_softcapping=20.0,
                sliding_window=8,
            ),
        ),
        "mistral": (MistralConfig, dict(sliding_window=8)),
        "llama": (LlamaConfig, {}),
        "qwen2": (Qwen2Config, {}),
        "qwen3": (Qwen3Config, dict(head_dim=16)),
    }
    if arch not in per_arch:
        raise ValueError(f"unknown tiny architecture {arch!r}; one of {FOREIGN_ARCHS + NATIVE_ARCHS}")
    cls, extra = per_arch[arch]
    return cls(**{**common, **extra, **overrides})


def tiny_foreign_model(arch: str, *, seed: int = 0, init_std: float | None = None, **config: Any) -> Any:
    """A seeded fp32 transformers model of ``arch`` in eval mode.

    By default transformers' init, with norms and biases perturbed (``0.1 * randn``: HF inits them
    to one and zero, so mistakes would not show). ``init_std`` instead draws every matrix from
    ``N(0, init_std)`` (larger weights: varied samples) and leaves norms and biases alone.
    ``config`` goes to :func:`tiny_foreign_config`.
    """
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_foreign_config(arch, **config), dtype=torch.float32)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if init_std is not None:
                    if p.dim() > 1:
                        p.normal_(0.0, init_std)
                elif "norm" in name or name.endswith(".bias"):
                    p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save_tiny_foreign(
    arch: str, out: str | os.PathLike[str], *, seed: int = 0, chat_template: bool = True, **model: Any
) -> Path:
    """Write a tiny ``arch`` model folder (safetensors + config.json + the built-in tokenizer).

    ``chat_template=False`` saves the tokenizer without its ChatML template (a base model);
    ``model`` goes to :func:`tiny_foreign_model` (``init_std``, config overrides).
    """
    from rlkit.models.tokenizer import build_tokenizer

    folder = Path(out)
    tiny_foreign_model(arch, seed=seed, **model).save_pretrained(folder, safe_serialization=True)
    build_tokenizer(chat_template=chat_template).save_pretrained(folder)
    return folder
