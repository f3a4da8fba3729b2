"""Reference model shapes that benchmarks and tests build with random weights (no download)."""

from __future__ import annotations

from rlkit.models import DecoderConfig

QWEN25_05B = DecoderConfig(
    architecture="qwen2",
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    head_dim=64,
    rope_theta=1_000_000.0,
    tie_word_embeddings=True,
    attention_bias=True,
    max_position_embeddings=32768,
    eos_token_id=151643,
    pad_token_id=151643,
)
"""Qwen2.5-0.5B (tied embeddings, qkv bias)."""

TINY = DecoderConfig(
    architecture="qwen2",
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    tie_word_embeddings=True,
    attention_bias=True,
    eos_token_id=2,
    pad_token_id=0,
)
"""A CPU smoke-test model."""
