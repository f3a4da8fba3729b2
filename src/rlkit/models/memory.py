"""Peak memory of a dense decoder per device and phase, from its ``config.json`` alone (``rlkit plan``).

The numbers follow what rlkit's own code keeps alive, not a generic rule of thumb:

- training (:mod:`rlkit.training.engine`): FSDP2 keeps fp32 master weights, fp32 gradients and
  AdamW's two fp32 moments, each sharded over the ranks (16 bytes per parameter / world), and
  gathers one layer at a time in the compute dtype (two, with prefetch);
- activations (:mod:`rlkit.models.decoder`): the tensors each layer saves for backward, per token;
  with gradient checkpointing only each layer's input stays, plus one layer recomputed at a time;
- logits (:mod:`rlkit.models.logprobs`): ``chunk_tokens`` rows of the LM head at once, in fp32,
  recomputed in backward, so a few chunks and never the full (tokens x vocabulary) matrix;
- rollout (:mod:`rlkit.rollout.native`): a full copy of the weights in the compute dtype, the
  KV cache (``slots x max_len`` tokens) and a few logits rows per slot.

Attention is counted as packed (flash-style) attention, which keeps no (length x length) scores.
Everything is an estimate: allocator caching, fragmentation and the framework's own buffers
come on top (the tests state how close it comes to measured peaks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Bytes of training state per parameter: fp32 master weight + fp32 gradient + AdamW's exp_avg, exp_avg_sq.
_WEIGHT_B, _GRAD_B, _ADAM_B = 4, 4, 8
# Layers whose full weights FSDP2 holds gathered at once (the current one and the prefetched next).
_GATHERED_LAYERS = 2
# Logits chunks alive at once under the chunked log-prob (the chunk, its softmax, its gradient).
_LOGIT_CHUNKS = 3
# Logits rows per rollout slot (rlkit.rollout.native._LOGIT_ROWS_PER_SLOT).
_ROLLOUT_LOGIT_ROWS = 6


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder that memory depends on, read from a Hugging Face ``config.json``."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool
    attention_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelShape:
        """From a parsed ``config.json`` (Llama / Qwen2 / Qwen3 keys; biases and q/k norms as
        :meth:`rlkit.models.decoder.DecoderConfig.from_hf` reads them)."""
        kind = hf.get("model_type", "")
        heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hidden // heads),
            tied_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", kind == "qwen2")),
            qk_norm=kind == "qwen3",
        )

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer: attention (with q/k/v biases and q/k norms where the
        architecture has them), MLP, two norms."""
        d, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        extra = (q + 2 * kv if self.attention_bias else 0) + (2 * self.head_dim if self.qk_norm else 0)
        return d * q + 2 * d * kv + q * d + 3 * d * self.intermediate_size + 2 * d + extra

    @property
    def num_params(self) -> int:
        """All parameters: embeddings, layers, final norm, and the LM head unless it is tied."""
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tied_embeddings else embed
        return embed + head + self.num_layers * self.layer_params + self.hidden_size

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V over all layers for one cached token."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def saved_per_token_layer(self, dtype_bytes: int) -> int:
        """Bytes one layer saves for backward per token, without checkpointing.

        Counted from :class:`rlkit.models.decoder.DecoderLayer`: each RMSNorm keeps its fp32 input
        and its output; attention keeps q, k, v before and after rotation and its output; the MLP
        keeps gate, up, silu(gate) and their product; the residual stream twice.
        """
        d, q, kv, i = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        )
        norms = 2 * (4 * d + dtype_bytes * d)
        attention = dtype_bytes * (2 * (q + 2 * kv) + 2 * q)
        mlp = dtype_bytes * 4 * i
        return norms + attention + mlp + dtype_bytes * 2 * d


@dataclass(frozen=True)
class PhaseMemory:
    """Estimated peak bytes on one device during one phase, by part (a part of 0 is absent)."""

    phase: str
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def training_state(shape: ModelShape, world: int, *, offload: bool = False) -> dict[str, int]:
    """Sharded fp32 weights, gradients and AdamW moments on one device (0 when offloaded to the host)."""
    per = shape.num_params / world
    if offload:
        return {"weights": 0, "gradients": 0, "optimizer": 0}
    return {"weights": int(per * _WEIGHT_B), "gradients": int(per * _GRAD_B), "optimizer": int(per * _ADAM_B)}


def gathered_layers(shape: ModelShape, world: int, dtype_bytes: int) -> int:
    """Full layers FSDP2 holds gathered in the compute dtype while it runs them (none on one rank)."""
    return 0 if world == 1 else _GATHERED_LAYERS * shape.layer_params * dtype_bytes


def activations(shape: ModelShape, tokens: int, dtype_bytes: int, *, checkpointing: bool) -> int:
    """Activations kept for backward over a micro-batch of ``tokens`` tokens.

    With checkpointing each layer keeps only its input (``tokens x hidden``), and one layer's
    saved tensors exist again while it is recomputed in backward.
    """
    per_layer = shape.saved_per_token_layer(dtype_bytes) * tokens
    if checkpointing:
        return shape.num_layers * tokens * shape.hidden_size * dtype_bytes + per_layer
    return shape.num_layers * per_layer


def logits(shape: ModelShape, tokens: int, chunk_tokens: int) -> int:
    """fp32 LM-head logits alive at once under the chunked log-prob."""
    return _LOGIT_CHUNKS * min(tokens, chunk_tokens) * shape.vocab_size * 4


def rollout_cache(shape: ModelShape, slots: int, max_len: int, dtype_bytes: int) -> int:
    """The native engine's KV cache and logits rows for ``slots`` sequences of ``max_len`` tokens."""
    return slots * (
        shape.kv_bytes_per_token(dtype_bytes) * max_len + _ROLLOUT_LOGIT_ROWS * 4 * shape.vocab_size
    )
