"""Native Llama / Qwen2 / Qwen2.5 / Qwen3 dense decoder in plain PyTorch.

One implementation serves training (packed sequences without padding, activation checkpointing) and
the native rollout engine (which drives the per-layer blocks with its own KV cache). Module and
parameter names mirror Hugging Face's (``model.layers.0.self_attn.q_proj.weight``, ...), so a
Hugging Face state dict loads with ``load_state_dict`` unchanged and saves back identically.

Shape legend: T = packed tokens (all sequences of a batch laid end to end), B = batch, L = padded
length, D = hidden size, H = query heads, K = key/value heads, Dh = head dim, V = vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rlkit.models.attention import packed_causal_attention

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclass
class DecoderConfig:
    """Architecture of a dense decoder; ``from_hf``/``to_hf`` map Hugging Face's config.json."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> DecoderConfig:
        """Build from a Hugging Face ``config.json`` dict of a supported ``model_type``."""
        arch = hf.get("model_type", "")
        if arch not in ARCHITECTURES:
            raise ValueError(f"native decoder does not support model_type {arch!r}")
        heads = hf["num_attention_heads"]
        rope_theta = hf.get("rope_theta")
        rope_params = hf.get("rope_parameters") or {}
        if rope_theta is None:  # transformers 5 keeps it in rope_parameters
            rope_theta = rope_params.get("rope_theta", 10000.0)
        rope_scaling = hf.get("rope_scaling") or (
            rope_params if rope_params.get("rope_type", "default") != "default" else None
        )
        return cls(
            architecture=arch,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            attention_bias=hf.get("attention_bias", arch == "qwen2"),
            qk_norm=arch == "qwen3",
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` dict of this architecture."""
        hf: dict[str, Any] = {
            "architectures": [ARCHITECTURES[self.architecture]],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }
        if self.rope_scaling:
            hf["rope_scaling"] = self.rope_scaling
        if self.architecture == "llama":
            hf["attention_bias"] = self.attention_bias
            hf["mlp_bias"] = False
        return hf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 and cast back (as Hugging Face does)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        # The weight in the activations' dtype: under autocast (fp32 weights, bf16 activations)
        # the product stays bf16, as it is when the weights themselves are bf16.
        return self.weight.to(dtype) * x32.to(dtype)


def _rope_inv_freq(cfg: DecoderConfig) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding, with Llama-3 style scaling when configured."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    scaling = cfg.rope_scaling or {}
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions; computed in fp32 and cast to the activations' dtype."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.register_buffer("inv_freq", _rope_inv_freq(cfg), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (...,) int -> cos, sin (..., Dh)."""
        freqs = positions.float()[..., None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., heads, Dh) by cos/sin (..., Dh), the rotate-half convention of Hugging Face."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Grouped-query attention. ``qkv`` and ``out`` are separate so a KV-cache engine can reuse them."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, cfg.num_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, d, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None

    def qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (..., D) -> q (..., H, Dh), k and v (..., K, Dh), with rotary applied to q and k."""
        lead = x.shape[:-1]
        q = self.q_proj(x).view(*lead, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(*lead, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(*lead, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, o: torch.Tensor) -> torch.Tensor:
        """o (..., H, Dh) -> (..., D)."""
        return self.o_proj(o.flatten(-2))

    def forward(
        self, x_TD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int
    ) -> torch.Tensor:
        q, k, v = self.qkv(x_TD, cos, sin)
        return self.out(packed_causal_attention(q, k, v, cu_seqlens, max_len))


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cu_seqlens, max_len)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    """Embedding, decoder layers and final norm: the backbone shared by the LM and the value model."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg)
        self.gradient_checkpointing = False

    def forward(
        self, input_ids_T: torch.Tensor, position_ids_T: torch.Tensor, cu_seqlens: torch.Tensor
    ) -> torch.Tensor:
        """Packed forward: sequences laid end to end, attention never crosses a boundary.

        Shape:
            input_ids_T, position_ids_T: (T,); cu_seqlens: (num_seqs + 1,) int32 offsets, first 0, last T.
            Returns the final hidden states (T, D).
        """
        x = self.embed_tokens(input_ids_T)
        if torch.is_autocast_enabled(x.device.type):  # embedding lookups are not autocast ops
            x = x.to(torch.get_autocast_dtype(x.device.type))
        cos, sin = self.rotary(position_ids_T, x.dtype)
        max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, cu_seqlens, max_len, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cu_seqlens, max_len)
        return self.norm(x)


class CausalLM(nn.Module):
    """Decoder plus LM head; parameter names follow Hugging Face's ``*ForCausalLM``."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = DecoderModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.model.gradient_checkpointing = enabled

    def forward_packed(
        self, input_ids_T: torch.Tensor, position_ids_T: torch.Tensor, cu_seqlens: torch.Tensor
    ) -> torch.Tensor:
        """Final hidden states (T, D) of packed sequences; pair with ``lm_head`` chunk by chunk."""
        return self.model(input_ids_T, position_ids_T, cu_seqlens)

    def forward(
        self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, L, V) of a padded batch (left or right padding); padded positions get zeros.

        Internally the batch is packed (padding removed), so padded and packed forwards agree.
        """
        if attention_mask_BL is None:
            attention_mask_BL = torch.ones_like(input_ids_BL)
        input_ids_T, position_ids_T, cu_seqlens, keep = pack_padded(input_ids_BL, attention_mask_BL)
        logits_TV = self.lm_head(self.forward_packed(input_ids_T, position_ids_T, cu_seqlens))
        out = logits_TV.new_zeros(*input_ids_BL.shape, logits_TV.shape[-1])
        out[keep] = logits_TV
        return out


def pack_padded(
    input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove padding: returns input_ids (T,), position_ids (T,), cu_seqlens (B+1,) and the bool mask.

    Positions count from 0 at each row's first real token, so left and right padding give the same
    result. Rows must be contiguous runs of real tokens (the usual left/right padding).
    """
    keep = attention_mask_BL.bool()
    lengths = keep.sum(-1)
    position_ids = (keep.long().cumsum(-1) - 1).clamp(min=0)
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    return input_ids_BL[keep], position_ids[keep], cu_seqlens, keep
