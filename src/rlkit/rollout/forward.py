"""The two forwards of the native engine, driving ``CausalLM``'s blocks with the engine's KV cache.

``prefill_forward`` runs packed prompts through the packed attention path of ``rlkit.models`` and
stores each prompt's keys/values into every slot of its group (the n samples of a prompt share one
prefill; :func:`refill_slots` reuses it to rewrite in-flight sequences' caches after a weight
update mid-generation). ``decode_forward`` runs one token per slot against the cache; it allocates
nothing that outlives it and has static shapes per batch size, so it can be captured in a CUDA graph.

Both repeat ``DecoderLayer.forward`` of ``rlkit.models.decoder`` step by step (norm, qkv, attention,
out, MLP) with the cache in between; a change there must be mirrored here (the equivalence tests
against transformers' ``generate`` catch a mismatch).

Shape legend: T = packed prompt tokens, N = cache rows written (prompt tokens x samples),
P = prompts, B = decode rows, D = hidden, V = vocabulary.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from rlkit.hardware.kernels import use_triton
from rlkit.models.attention import packed_causal_attention
from rlkit.models.decoder import CausalLM, DecoderLayer, RMSNorm
from rlkit.rollout.fused import FusedLayer
from rlkit.rollout.kv_cache import DecodeMeta, KVCache


def layers_of(model: CausalLM) -> list[DecoderLayer]:
    return cast(list[DecoderLayer], list(model.model.layers))


def prefill_forward(
    model: CausalLM,
    cache: KVCache,
    input_ids_T: torch.Tensor,
    position_ids_T: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_len: int,
    dest_N: torch.Tensor,
    src_N: torch.Tensor,
    last_P: torch.Tensor,
) -> torch.Tensor:
    """Prefill packed prompts, write their keys/values into the cache, return last-token logits.

    Args:
        model: The native causal LM.
        cache: The engine's cache.
        input_ids_T: The prompts laid end to end.
        position_ids_T: Positions within each prompt (from 0).
        cu_seqlens: int32 prompt offsets (P + 1).
        max_len: The longest prompt.
        dest_N: Flat cache positions (``slot * max_len + position``) to write.
        src_N: For each destination, the packed token whose keys/values go there.
        last_P: Index of each prompt's last token.

    Shape:
        input_ids_T, position_ids_T: (T,); cu_seqlens: (P + 1,); dest_N, src_N: (N,); last_P: (P,).
        Returns logits (P, V) in the model's dtype.
    """
    backbone = model.model
    x = backbone.embed_tokens(input_ids_T)
    cos, sin = backbone.rotary(position_ids_T, x.dtype)
    for i, layer in enumerate(layers_of(model)):
        q, k, v = layer.self_attn.qkv(layer.input_layernorm(x), cos, sin)
        cache.write(i, dest_N, k.index_select(0, src_N), v.index_select(0, src_N))
        x = x + layer.self_attn.out(packed_causal_attention(q, k, v, cu_seqlens, max_len))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    logits: torch.Tensor = model.lm_head(backbone.norm(x.index_select(0, last_P)))
    return logits


def pack_contexts(
    contexts: list[tuple[int, list[int]]], max_tokens: int
) -> list[list[tuple[int, list[int]]]]:
    """``(slot, context)`` pairs cut into packs of at most ``max_tokens`` tokens (a longer one alone)."""
    packs: list[list[tuple[int, list[int]]]] = []
    size = 0
    for slot, context in contexts:
        if not packs or size + len(context) > max_tokens:
            packs.append([])
            size = 0
        packs[-1].append((slot, context))
        size += len(context)
    return packs


def refill_slots(
    model: CausalLM, cache: KVCache, pack: list[tuple[int, list[int]]], device: torch.device
) -> int:
    """Rewrite each slot's keys/values from position 0 with ``model``'s current weights: one packed
    prefill of its ``context`` (after an in-flight weight update). Returns the tokens prefilled."""
    ids = [token for _, context in pack for token in context]
    positions = [p for _, context in pack for p in range(len(context))]
    dest = [slot * cache.max_len + p for slot, context in pack for p in range(len(context))]
    cu = [0]
    for _, context in pack:
        cu.append(cu[-1] + len(context))
    cu_t = torch.tensor(cu, dtype=torch.int32, device=device)
    prefill_forward(
        model,
        cache,
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(positions, dtype=torch.long, device=device),
        cu_t,
        max(len(context) for _, context in pack),
        torch.tensor(dest, dtype=torch.long, device=device),
        torch.arange(len(ids), device=device),
        cu_t[1:].long() - 1,
    )
    return len(ids)


def rms_norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """``RMSNorm`` of rlkit.models.decoder in two kernels instead of six.

    ``F.rms_norm`` normalises in fp32 whatever the input dtype and rounds once to it, which is the
    decoder's ``(x.float() * rsqrt(mean(x^2) + eps)).to(dtype)``; the weight is applied after the
    rounding, in the activation dtype, as the decoder (and Hugging Face) do.
    """
    return norm.weight * F.rms_norm(x, (x.shape[-1],), eps=norm.eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in three kernels: ``x * cos + rotate_half(x) * sin``.

    ``rotate_half(x) = cat(-x2, x1)`` equals ``roll(x, Dh / 2) * cat(-1, +1)``, so with
    ``sin_signed = cat(-sin1, sin2)`` the rotation is one roll and one fused multiply-add.

    Shape:
        x: (B, heads, Dh); cos, sin_signed: (B, 1, Dh). Returns (B, heads, Dh).
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin_signed)


def decode_forward(
    model: CausalLM,
    fused: list[FusedLayer],
    cache: KVCache,
    tokens_B: torch.Tensor,
    positions_B: torch.Tensor,
    attn_len: int,
    logits_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step for slots 0..B-1: write each token's keys/values, attend, return logits.

    Positions are clamped to the slot size so that rows of idle slots (which ride along in a
    fixed-size batch) can never write outside their own slot. The projections run on the fused
    buffers of ``fuse_layers`` (one GEMM for q/k/v, one for gate/up). Where Triton runs
    (``rlkit.hardware.kernels.use_triton``) and the model has no q/k norms, the elementwise work
    between the GEMMs runs in the fused kernels of ``rlkit.rollout.kernels`` instead.

    ``logits_out``, a contiguous (B, V) buffer in the model's dtype, receives the logits (the LM
    head's GEMM writes it directly: at a large vocabulary a separate copy costs a pass over B x V).

    Shape:
        tokens_B, positions_B: (B,) long (slot i holds row i). Returns logits (B, V) in the model's
        dtype (``logits_out`` when given).
    """
    backbone, cfg = model.model, model.config
    b, heads, kv_heads, head_dim = tokens_B.shape[0], cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    positions_B = positions_B.clamp(max=cache.max_len - 1)
    flat_B = torch.arange(b, device=tokens_B.device) * cache.max_len + positions_B
    meta = cache.decode_meta(positions_B + 1, attn_len)
    x = backbone.embed_tokens(tokens_B)
    cos, sin = backbone.rotary(positions_B, x.dtype)
    half = head_dim // 2
    cos, sin_signed = cos[:, None, :], torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)[:, None, :]
    if not cfg.qk_norm and use_triton(tokens_B.device):
        h = _decode_layers_triton(model, fused, cache, x, cos[:, 0], sin_signed[:, 0], flat_B, meta)
        return lm_head(model, h, logits_out)
    for i, (layer, fl) in enumerate(zip(layers_of(model), fused, strict=True)):
        attn, mlp = layer.self_attn, layer.mlp
        qkv = F.linear(rms_norm(layer.input_layernorm, x), fl.qkv_weight, fl.qkv_bias)
        qkv = qkv.view(b, heads + 2 * kv_heads, head_dim)
        v = qkv[:, heads + kv_heads :]
        if attn.q_norm is not None and attn.k_norm is not None:
            q = rope(rms_norm(attn.q_norm, qkv[:, :heads]), cos, sin_signed)
            k = rope(rms_norm(attn.k_norm, qkv[:, heads : heads + kv_heads]), cos, sin_signed)
        else:
            qk = rope(qkv[:, : heads + kv_heads], cos, sin_signed)
            q, k = qk[:, :heads], qk[:, heads:]
        cache.write(i, flat_B, k, v)
        x = x + attn.o_proj(cache.attend(i, q, meta).flatten(1))
        gate, up = F.linear(rms_norm(layer.post_attention_layernorm, x), fl.gate_up_weight).chunk(2, dim=-1)
        x = x + mlp.down_proj(F.silu(gate) * up)
    return lm_head(model, rms_norm(backbone.norm, x), logits_out)


def lm_head(model: CausalLM, h_BD: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``model.lm_head(h_BD)``, written into ``out`` when given (the head has no bias)."""
    if out is None:
        logits: torch.Tensor = model.lm_head(h_BD)
        return logits
    return torch.mm(h_BD, model.lm_head.weight.t(), out=out)


def _decode_layers_triton(
    model: CausalLM,
    fused: list[FusedLayer],
    cache: KVCache,
    x_BD: torch.Tensor,
    cos_BD: torch.Tensor,
    sin_signed_BD: torch.Tensor,
    flat_B: torch.Tensor,
    meta: DecodeMeta,
) -> torch.Tensor:
    """The layers and final norm of ``decode_forward`` with the elementwise work in Triton kernels.

    Per layer: residual add + norm, q/k/v GEMM, rotary + cache write + query packing, attention,
    out projection, residual add + norm, gate/up GEMM, silu * mul, down projection. Each sublayer's
    residual add is deferred into the next norm (the final norm takes the last one). The roundings
    are the eager loop's, so both give the same logits up to last-place differences.

    Shape:
        x_BD: (B, D) embeddings; cos_BD, sin_signed_BD: (B, Dh); flat_B: (B,). Returns the normed
        final hidden states (B, D).
    """
    from rlkit.rollout import kernels

    backbone, cfg = model.model, model.config
    heads, kv_heads, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    b, flat_kv = x_BD.shape[0], (-1, kv_heads, head_dim)
    delta: torch.Tensor | None = None
    for i, (layer, fl) in enumerate(zip(layers_of(model), fused, strict=True)):
        norm = layer.input_layernorm
        x_BD, h = kernels.add_rms_norm(x_BD, delta, norm.weight, norm.eps)
        qkv = F.linear(h, fl.qkv_weight, fl.qkv_bias).view(b, heads + 2 * kv_heads, head_dim)
        q_packed = kernels.rope_kv_write(
            qkv,
            cos_BD,
            sin_signed_BD,
            cache.k[i].view(flat_kv),
            cache.v[i].view(flat_kv),
            flat_B,
            heads,
            kv_heads,
        )
        attn_out = layer.self_attn.o_proj(cache.attend_packed(i, q_packed, meta).flatten(1))
        norm = layer.post_attention_layernorm
        x_BD, h = kernels.add_rms_norm(x_BD, attn_out, norm.weight, norm.eps)
        delta = layer.mlp.down_proj(kernels.silu_mul(F.linear(h, fl.gate_up_weight)))
    _, h = kernels.add_rms_norm(x_BD, delta, backbone.norm.weight, backbone.norm.eps)
    return h
