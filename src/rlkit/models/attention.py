"""Causal attention over packed sequences (no padding; attention never crosses a sequence boundary).

On CUDA it calls PyTorch's flash-attention varlen kernel directly (``aten::_flash_attention_forward``,
whose autograd formula is the flash backward; grouped-query heads need no expansion), or, on ROCm,
through ``torch.nn.attention.varlen`` when this torch has it. The direct call matters for small
models: the ``varlen_attn`` custom op's Python wrapper costs about 0.1 ms of host time per layer
and pass, in a step that is bound by the host. Otherwise, and on CPU, it uses scaled-dot-product
attention in whichever of three layouts costs least for these lengths: the sequences padded to one
(N, Lmax) batch with a plain causal mask (many sequences of similar length, the RL case), one
block-diagonal causal mask over all T tokens (short batches of uneven lengths), or one call per
sequence (long ones, to keep the T x T mask bounded).

Shape legend: T = packed tokens, H = query heads, K = key/value heads, Dh = head dim.
"""

from __future__ import annotations

import inspect
from functools import cache

import torch
import torch.nn.functional as F

# A dense T x T mask costs T^2 bytes; above this many tokens go sequence by sequence instead.
_DENSE_MASK_MAX_TOKENS = 4096


# Whether ``aten::_flash_attention_forward`` runs: CUDA builds with flash attention, not ROCm. A build
# property, read once here rather than in the traced code of a compiled layer.
_DIRECT_FLASH = torch.version.hip is None and bool(torch.backends.cuda.is_flash_attention_available())


def _flash_varlen(
    q_THD: torch.Tensor, k_TKD: torch.Tensor, v_TKD: torch.Tensor, cu: torch.Tensor, max_len: int
) -> torch.Tensor:
    out: torch.Tensor = torch.ops.aten._flash_attention_forward(
        q_THD, k_TKD, v_TKD, cu, cu, max_len, max_len, 0.0, True, False
    )[0]
    return out


@cache
def _varlen_kernel() -> tuple[object, dict[str, object]] | None:
    """PyTorch's varlen flash attention and the keywords that make it causal, if this torch has it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        causal: dict[str, object] = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        return None
    if "enable_gqa" in params:
        causal["enable_gqa"] = True
    return varlen_attn, causal


def packed_causal_attention(
    q_THD: torch.Tensor, k_TKD: torch.Tensor, v_TKD: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int
) -> torch.Tensor:
    """Causal attention within each packed sequence.

    Shape:
        q_THD: (T, H, Dh); k_TKD, v_TKD: (T, K, Dh) with H a multiple of K;
        cu_seqlens: (N + 1,) int32 offsets of the N sequences. Returns (T, H, Dh).
    """
    if q_THD.shape[0] == 0:
        return q_THD.clone()
    half = q_THD.dtype in (torch.float16, torch.bfloat16)
    if half and q_THD.is_cuda and _DIRECT_FLASH:
        cu = cu_seqlens.to(device=q_THD.device, dtype=torch.int32)
        return _flash_varlen(q_THD, k_TKD, v_TKD, cu, max_len)
    kernel = _varlen_kernel() if q_THD.is_cuda else None
    if kernel is not None and half:
        fn, causal = kernel
        if "enable_gqa" not in causal:
            k_TKD, v_TKD = _expand_kv(k_TKD, v_TKD, q_THD.shape[1])
        cu = cu_seqlens.to(device=q_THD.device, dtype=torch.int32)
        return fn(q_THD, k_TKD, v_TKD, cu, cu, max_len, max_len, **causal)  # type: ignore[operator]
    k_TKD, v_TKD = _expand_kv(k_TKD, v_TKD, q_THD.shape[1])
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    total, longest = q_THD.shape[0], max(lengths)
    # attention scores each layout computes; a call costs about as much as a 64 x 64 block
    padded = len(lengths) * longest * longest
    per_sequence = sum(n * n for n in lengths) + 64 * 64 * len(lengths)
    dense = total * total if total <= _DENSE_MASK_MAX_TOKENS else None
    if padded <= per_sequence and (dense is None or padded <= dense):
        return _sdpa_padded(q_THD, k_TKD, v_TKD, cu_seqlens, longest)
    if dense is not None and dense <= per_sequence:
        return _sdpa_dense(q_THD, k_TKD, v_TKD, cu_seqlens)
    return _sdpa_per_sequence(q_THD, k_TKD, v_TKD, cu_seqlens)


def _expand_kv(k: torch.Tensor, v: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    rep = num_heads // k.shape[1]
    if rep == 1:
        return k, v
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)


def document_causal_mask(cu_seqlens: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """Bool (T, T) mask: query i sees key j iff both are in the same sequence and j <= i."""
    doc = torch.repeat_interleave(
        torch.arange(cu_seqlens.numel() - 1, device=device),
        (cu_seqlens[1:] - cu_seqlens[:-1]).to(device=device, dtype=torch.long),
        output_size=total,
    )
    idx = torch.arange(total, device=device)
    return (doc[:, None] == doc[None, :]) & (idx[None, :] <= idx[:, None])


def _sdpa_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    mask = document_causal_mask(cu_seqlens, q.shape[0], q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        attn_mask=mask,
    )
    return out.squeeze(0).transpose(0, 1)


def _sdpa_padded(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, longest: int
) -> torch.Tensor:
    """Scatter the sequences into an (N, H, Lmax, Dh) batch, attend causally, gather the real tokens.

    Padding sits after each sequence's last token, so a causal query never sees it.
    """
    total, num_seqs = q.shape[0], cu_seqlens.numel() - 1
    starts = cu_seqlens[:-1].to(device=q.device, dtype=torch.long)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(device=q.device, dtype=torch.long)
    doc = torch.repeat_interleave(torch.arange(num_seqs, device=q.device), lengths, output_size=total)
    pos = torch.arange(total, device=q.device) - starts[doc]

    def pad(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros(num_seqs, longest, *t.shape[1:])
        out[doc, pos] = t
        return out.transpose(1, 2)

    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), is_causal=True)
    return out.transpose(1, 2)[doc, pos]


def _sdpa_per_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    bounds = cu_seqlens.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end == start:
            continue
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).squeeze(0).transpose(0, 1))
    return torch.cat(outs, dim=0)
