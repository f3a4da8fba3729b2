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

QWEN25_15B = DecoderConfig(
    architecture="qwen2",
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_layers=28,
    num_heads=12,
    num_kv_heads=2,
    head_dim=128,
    rope_theta=1_000_000.0,
    tie_word_embeddings=True,
    attention_bias=True,
    max_position_embeddings=32768,
    eos_token_id=151643,
    pad_token_id=151643,
)
"""Qwen2.5-1.5B (tied embeddings, qkv bias)."""

QWEN25_7B = DecoderConfig(
    architecture="qwen2",
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_layers=28,
    num_heads=28,
    num_kv_heads=4,
    head_dim=128,
    rope_theta=1_000_000.0,
    tie_word_embeddings=False,
    attention_bias=True,
    max_position_embeddings=32768,
    eos_token_id=151643,
    pad_token_id=151643,
)
"""Qwen2.5-7B (untied embeddings, qkv bias)."""

SHAPES = {"0.5b": QWEN25_05B, "1.5b": QWEN25_15B, "7b": QWEN25_7B}
"""The benchmarks' ``--shape`` choices."""
