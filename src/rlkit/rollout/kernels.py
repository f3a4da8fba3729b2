"""Triton kernels fusing the elementwise work of :func:`rlkit.rollout.forward.decode_forward`.

A decode step at small batch is bound by kernel launches and latency, not by arithmetic; in eager
PyTorch about twenty small elementwise kernels per layer (norms, rotary, cache writes, the
grouped-query packing copy, silu * mul, residual adds) surround the GEMMs. Three kernels replace
them:

- ``add_rms_norm``: the residual add of the previous sublayer and the next RMS norm, one pass.
- ``rope_kv_write``: rotary on the query and key heads of the fused q/k/v projection, the write of
  keys and values into the cache, and the queries laid out as the flash decode path packs them.
- ``silu_mul``: ``silu(gate) * up`` of the fused gate/up projection.

Each reproduces the roundings of the eager path (math in fp32, one rounding to the activation
dtype wherever eager PyTorch rounds), so in fp32 the two paths agree to rounding error and in
bf16 they agree bit for bit up to the last-place differences of ``rsqrt``/``exp``.

Only imported where :func:`rlkit.hardware.kernels.use_triton` says Triton runs.

Shape legend: B = decode rows, D = hidden, H = query heads, K = key/value heads, G = H / K,
Dh = head dim, X = cache positions (slots x max_len), I = intermediate size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _round(x, dtype: tl.constexpr):
    """fp32 ``x`` rounded to the nearest (ties to even) value of ``dtype``, still held in fp32.

    bf16 is rounded with integer arithmetic on the bits: a GPU converts fp32 to bf16 to nearest
    even, but Triton's CPU interpreter truncates, and the tests check the kernels there. The value
    is then representable, so storing it (or casting it) to ``dtype`` is exact on both.
    """
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype).to(tl.float32)


@triton.jit
def _add_rms_norm_kernel(
    x_ptr,
    delta_ptr,
    weight_ptr,
    x_out_ptr,
    out_ptr,
    dim,
    eps,
    HAS_DELTA: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < dim
    x = tl.load(x_ptr + row * dim + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_DELTA:
        delta = tl.load(delta_ptr + row * dim + offs, mask=mask, other=0.0).to(tl.float32)
        # the residual stream is stored in the activation dtype: round before normalising
        x = _round(x + delta, x_out_ptr.dtype.element_ty)
        tl.store(x_out_ptr + row * dim + offs, x, mask=mask)
    inv_rms = tl.rsqrt(tl.sum(x * x, axis=0) / dim + eps)
    # F.rms_norm rounds to the input dtype; the weight multiplies that rounded value
    normed = _round(x * inv_rms, x_ptr.dtype.element_ty)
    weight = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * dim + offs, _round(weight * normed, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kv_write_kernel(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    k_cache_ptr,
    v_cache_ptr,
    flat_ptr,
    q_out_ptr,
    stride_cos,
    stride_sin,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    group: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
    half: tl.constexpr = HEAD_DIM // 2
    rows_total: tl.constexpr = NUM_HEADS + 2 * NUM_KV_HEADS
    r = tl.arange(0, BLOCK_R)[:, None]  # head row of the fused projection: q heads, k heads, v heads
    d = tl.arange(0, BLOCK_D)[None, :]
    d_ok = d < HEAD_DIM
    in_row = (r < rows_total) & d_ok
    base = qkv_ptr + b * (rows_total * HEAD_DIM)
    x = tl.load(base + r * HEAD_DIM + d, mask=in_row, other=0.0).to(tl.float32)
    # roll by Dh / 2 along the head dim: element d takes element (d + Dh / 2) mod Dh
    d_rolled = tl.where(d < half, d + half, d - half)
    x_rolled = tl.load(base + r * HEAD_DIM + d_rolled, mask=in_row, other=0.0).to(tl.float32)
    cos = tl.load(cos_ptr + b * stride_cos + d, mask=d_ok, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + b * stride_sin + d, mask=d_ok, other=0.0).to(tl.float32)
    dtype = q_out_ptr.dtype.element_ty
    # eager rope is addcmul(x * cos, roll(x), sin): x * cos rounds, the multiply-add rounds once
    roped = _round(_round(x * cos, dtype) + x_rolled * sin, dtype)

    is_q = (r < NUM_HEADS) & d_ok
    q_head = tl.where(r < NUM_HEADS, r, 0)
    # grouped-query packing: q head j * G + g of row b goes to packed row b * G + g, kv head j
    q_off = ((b * group + q_head % group) * NUM_KV_HEADS + q_head // group) * HEAD_DIM + d
    tl.store(q_out_ptr + q_off, roped, mask=is_q)

    flat = tl.load(flat_ptr + b).to(tl.int64)
    is_k = (r >= NUM_HEADS) & (r < NUM_HEADS + NUM_KV_HEADS) & d_ok
    k_head = tl.where(is_k, r - NUM_HEADS, 0)
    tl.store(k_cache_ptr + (flat * NUM_KV_HEADS + k_head) * HEAD_DIM + d, roped, mask=is_k)
    is_v = (r >= NUM_HEADS + NUM_KV_HEADS) & in_row
    v_head = tl.where(is_v, r - NUM_HEADS - NUM_KV_HEADS, 0)
    tl.store(v_cache_ptr + (flat * NUM_KV_HEADS + v_head) * HEAD_DIM + d, x, mask=is_v)


@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    gate = tl.load(gate_up_ptr + row * 2 * inter + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * 2 * inter + inter + offs, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    # eager F.silu(gate) * up: silu rounds to the dtype before the product (torch's x / (1 + e^-x))
    silu = _round(gate / (1.0 + tl.exp(-gate)), dtype)
    tl.store(out_ptr + row * inter + offs, _round(silu * up, dtype), mask=mask)


def _warps(elements: int) -> int:
    return 1 if elements <= 512 else 2 if elements <= 2048 else 4


def add_rms_norm(
    x_BD: torch.Tensor, delta_BD: torch.Tensor | None, weight_D: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x + delta`` and ``weight * rms_norm(x + delta)``, rounded as the eager decode step rounds.

    Args:
        x_BD: The residual stream.
        delta_BD: The previous sublayer's output, or None to normalise ``x_BD`` alone.
        weight_D: The norm's weight.
        eps: The norm's epsilon.

    Shape:
        x_BD, delta_BD: (B, D) contiguous; weight_D: (D,). Returns the new residual (B, D) in x's
        dtype (``x_BD`` itself when ``delta_BD`` is None) and the normalised rows (B, D) in the
        dtype of ``weight * x``.
    """
    rows, dim = x_BD.shape
    assert x_BD.is_contiguous() and weight_D.is_contiguous()
    out_dtype = torch.promote_types(weight_D.dtype, x_BD.dtype)
    normed = torch.empty((rows, dim), dtype=out_dtype, device=x_BD.device)
    if delta_BD is None:
        x_new = x_BD
    else:
        assert delta_BD.shape == x_BD.shape and delta_BD.is_contiguous()
        x_new = torch.empty_like(x_BD)
    block = triton.next_power_of_2(dim)
    if rows:
        _add_rms_norm_kernel[(rows,)](
            x_BD,
            x_BD if delta_BD is None else delta_BD,
            weight_D,
            x_new,
            normed,
            dim,
            eps,
            HAS_DELTA=delta_BD is not None,
            BLOCK=block,
            num_warps=_warps(block),
        )
    return x_new, normed


def rope_kv_write(
    qkv_BXD: torch.Tensor,
    cos_BD: torch.Tensor,
    sin_signed_BD: torch.Tensor,
    k_cache_XKD: torch.Tensor,
    v_cache_XKD: torch.Tensor,
    flat_B: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
) -> torch.Tensor:
    """Rotary on q and k, keys and values into the cache, q in the grouped-query packed layout.

    Does what ``rope`` of :mod:`rlkit.rollout.forward`, ``KVCache.write`` and
    ``KVCache.pack_queries`` do in turn: with ``qkv_BXD[b] = [q heads, k heads, v heads]``, writes
    roped k and raw v of row b to ``k_cache_XKD[flat_B[b]]`` and ``v_cache_XKD[flat_B[b]]``, and
    returns q with ``q_packed[b * G + g, j] = roped q head (j * G + g) of row b``.

    Args:
        qkv_BXD: The fused q/k/v projection, one row per decode row.
        cos_BD: cos of each row's position.
        sin_signed_BD: sin of each row's position, its first half negated (``rope``'s table).
        k_cache_XKD: One layer's key cache, flat over slots and positions (written in place).
        v_cache_XKD: One layer's value cache, same layout (written in place).
        flat_B: The cache position (``slot * max_len + position``) of each row, distinct.
        num_heads: H.
        num_kv_heads: K.

    Shape:
        qkv_BXD: (B, H + 2K, Dh) contiguous; cos_BD, sin_signed_BD: (B, Dh), last dim contiguous;
        k_cache_XKD, v_cache_XKD: (X, K, Dh) contiguous; flat_B: (B,) int. Returns (B * G, K, Dh).
    """
    rows, heads_total, head_dim = qkv_BXD.shape
    assert heads_total == num_heads + 2 * num_kv_heads and num_heads % num_kv_heads == 0
    assert head_dim % 2 == 0 and qkv_BXD.is_contiguous()
    assert k_cache_XKD.is_contiguous() and v_cache_XKD.is_contiguous()
    assert k_cache_XKD.shape[1:] == (num_kv_heads, head_dim) and k_cache_XKD.dtype == qkv_BXD.dtype
    assert cos_BD.stride(-1) == 1 and sin_signed_BD.stride(-1) == 1
    group = num_heads // num_kv_heads
    q_packed = torch.empty((rows * group, num_kv_heads, head_dim), dtype=qkv_BXD.dtype, device=qkv_BXD.device)
    block_r, block_d = triton.next_power_of_2(heads_total), triton.next_power_of_2(head_dim)
    if rows:
        _rope_kv_write_kernel[(rows,)](
            qkv_BXD,
            cos_BD,
            sin_signed_BD,
            k_cache_XKD,
            v_cache_XKD,
            flat_B,
            q_packed,
            cos_BD.stride(0),
            sin_signed_BD.stride(0),
            NUM_HEADS=num_heads,
            NUM_KV_HEADS=num_kv_heads,
            HEAD_DIM=head_dim,
            BLOCK_R=block_r,
            BLOCK_D=block_d,
            num_warps=_warps(block_r * block_d),
        )
    return q_packed


def silu_mul(gate_up_B2I: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of the fused gate/up projection (gate columns first).

    Shape:
        gate_up_B2I: (B, 2 * I) contiguous. Returns (B, I) in its dtype.
    """
    rows, width = gate_up_B2I.shape
    assert width % 2 == 0 and gate_up_B2I.is_contiguous()
    inter = width // 2
    out = torch.empty((rows, inter), dtype=gate_up_B2I.dtype, device=gate_up_B2I.device)
    block = min(triton.next_power_of_2(inter), 1024)
    if rows:
        _silu_mul_kernel[(rows, triton.cdiv(inter, block))](
            gate_up_B2I, out, inter, BLOCK=block, num_warps=_warps(block)
        )
    return out
