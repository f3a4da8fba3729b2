"""Triton decode attention over the slot KV cache of :mod:`rlkit.rollout.kv_cache`.

A decode step has one query token per slot; the G = H / K query heads sharing a kv head are the G
query rows of that kv head (the grouped-query packed layout of ``KVCache.pack_queries``), so one
program per (slot, kv head) reads that slot's keys and values once, up to the slot's length, and
serves all G heads with two small ``tl.dot``s per key block (online softmax in fp32, the output
rounded once to the query dtype).

The loop bound is each slot's length read from device memory and the grid depends on shapes
only, so a step captured in a CUDA graph stays correct when the lengths change between replays.
Where the (slot, kv head) programs alone would leave the GPU idle (few slots, a long ``max_len``)
the keys are also split into chunks, each program writes a partial softmax, and a second kernel
merges the chunks ("flash-decoding"); the split count is picked from shapes, never from lengths.

``KVCache`` runs this kernel for fp16/bf16 caches where :func:`rlkit.hardware.kernels.use_triton`
holds and the head dim is a power of two (:func:`supported`). ``RLKIT_DECODE_ATTN`` overrides the
choice when the cache is built: ``flash`` forces torch's flash varlen kernel (SDPA where it is
missing), ``sdpa`` forces masked scaled-dot-product attention, ``auto`` (the default) picks this
kernel first. Only imported where Triton runs.

Shape legend: B = decode rows (slots 0..B-1), S = slots, L = positions per slot, K = kv heads,
G = query heads per kv head, Dh = head dim, C = key chunks (splits).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import torch
import triton
import triton.language as tl

from rlkit.hardware import device as hardware
from rlkit.rollout.kernels import _round

# Keys one program should at least cover before splitting the keys pays for the merge kernel.
_MIN_KEYS_PER_SPLIT = 256
_MAX_SPLITS = 64


def supported(head_dim: int, dtype: torch.dtype) -> bool:
    """Whether :func:`decode_attention` takes caches of this head dim and dtype."""
    power_of_two = head_dim & (head_dim - 1) == 0
    return power_of_two and 16 <= head_dim <= 256 and dtype in (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _scores(q, k, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """``q @ k^T`` in fp32. ``EMULATE_BF16``: Triton's CPU interpreter multiplies bf16 ``tl.dot``
    operands as their raw uint16 storage, so there the exact fp32 upcast stands in for the bf16
    tensor-core product (which is exact in fp32 too)."""
    if EMULATE_BF16:
        return tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        return tl.dot(q, tl.trans(k), input_precision=PRECISION)


@triton.jit
def _weighted_values(p, v, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """``p @ v`` in fp32 with the fp32 probabilities rounded to the value dtype first, as the GPU
    rounds them (the interpreter would truncate, and its bf16 ``tl.dot`` is wrong: see _scores)."""
    if EMULATE_BF16:
        return tl.dot(_round(p, v.dtype), v.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(p.to(v.dtype), v, input_precision=PRECISION)


@triton.jit
def _decode_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    lengths_ptr,
    out_ptr,
    part_m_ptr,
    part_l_ptr,
    part_acc_ptr,
    slot_len,
    max_len,
    chunk,
    num_splits,
    qk_scale,
    GROUP: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
    UNPACKED_OUT: tl.constexpr,
    PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    split = tl.program_id(2)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, HEAD_DIM)
    g_ok = g < GROUP
    # packed query row b * G + g of kv head j; rows past G are zero and never stored
    q_off = ((b * GROUP + g) * NUM_KV_HEADS + j)[:, None] * HEAD_DIM + d[None, :]
    q = tl.load(q_ptr + q_off, mask=g_ok[:, None], other=0.0)

    # clamping to max_len keeps a bad length from reading the next slot
    length = tl.minimum(tl.load(lengths_ptr + b).to(tl.int32), max_len)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, length)
    kv_base = (b * slot_len * NUM_KV_HEADS + j) * HEAD_DIM
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < hi
        kv_off = kv_base + n.to(tl.int64)[:, None] * (NUM_KV_HEADS * HEAD_DIM) + d[None, :]
        k = tl.load(k_ptr + kv_off, mask=n_ok[:, None], other=0.0)
        # scores in the log2 domain (qk_scale holds log2(e)), so exp2 is the softmax's exp
        s = _scores(q, k, PRECISION, EMULATE_BF16) * qk_scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        # every block holds a valid key (the loop stops at the length), so m_new is finite
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + kv_off, mask=n_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + _weighted_values(p, v, PRECISION, EMULATE_BF16)
        m_i = m_new

    if SPLIT:
        # partial softmax of this chunk; an empty chunk leaves m = -inf, l = 0, acc = 0
        part = ((b * NUM_KV_HEADS + j) * num_splits + split) * GROUP + g
        tl.store(part_m_ptr + part, m_i, mask=g_ok)
        tl.store(part_l_ptr + part, l_i, mask=g_ok)
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + d[None, :], acc, mask=g_ok[:, None])
    else:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        out_off = _out_offsets(b, j, g, d, GROUP, NUM_KV_HEADS, HEAD_DIM, UNPACKED_OUT)
        tl.store(out_ptr + out_off, _round(out, out_ptr.dtype.element_ty), mask=g_ok[:, None])


@triton.jit
def _out_offsets(
    b,
    j,
    g,
    d,
    GROUP: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    UNPACKED: tl.constexpr,
):
    """Element offsets of query rows g of kv head j of slot b: packed (B * G, K, Dh) or, with
    ``UNPACKED``, the (B, H, Dh) layout of the model (head j * G + g), which the out projection reads."""
    if UNPACKED:
        row = (b * NUM_KV_HEADS + j) * GROUP + g
    else:
        row = (b * GROUP + g) * NUM_KV_HEADS + j
    return row[:, None] * HEAD_DIM + d[None, :]


@triton.jit
def _merge_splits_kernel(
    part_m_ptr,
    part_l_ptr,
    part_acc_ptr,
    out_ptr,
    num_splits,
    GROUP: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_G: tl.constexpr,
    UNPACKED_OUT: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, HEAD_DIM)
    g_ok = g < GROUP
    first = (b * NUM_KV_HEADS + j) * num_splits
    m_max = tl.full([BLOCK_G], float("-inf"), tl.float32)
    for c in range(num_splits):
        m_c = tl.load(part_m_ptr + (first + c) * GROUP + g, mask=g_ok, other=float("-inf"))
        m_max = tl.maximum(m_max, m_c)
    # -inf only for padded rows (or a zero length): weigh every chunk 0 instead of NaN
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    l_sum = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    for c in range(num_splits):
        part = (first + c) * GROUP + g
        w = tl.exp2(tl.load(part_m_ptr + part, mask=g_ok, other=float("-inf")) - m_max)
        l_sum += w * tl.load(part_l_ptr + part, mask=g_ok, other=0.0)
        acc_c = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM + d[None, :], mask=g_ok[:, None], other=0.0)
        acc += w[:, None] * acc_c
    out = acc / tl.where(l_sum > 0, l_sum, 1.0)[:, None]
    out_off = _out_offsets(b, j, g, d, GROUP, NUM_KV_HEADS, HEAD_DIM, UNPACKED_OUT)
    tl.store(out_ptr + out_off, _round(out, out_ptr.dtype.element_ty), mask=g_ok[:, None])


@cache
def _multiprocessors(device: torch.device) -> int:
    return hardware.multiprocessor_count(device)


def num_key_splits(programs: int, max_len: int, device: torch.device) -> int:
    """How many key chunks each (slot, kv head) gets: enough programs for about two waves of SMs.

    Depends on shapes only (``max_len`` is the static bound, not the lengths), so a captured step
    keeps its split count across replays and eager and captured steps round alike.
    """
    if device.type != "cuda":
        return 1
    target = 2 * _multiprocessors(device)
    if programs >= target or max_len < 2 * _MIN_KEYS_PER_SPLIT:
        return 1
    return max(1, min(-(-target // programs), max_len // _MIN_KEYS_PER_SPLIT, _MAX_SPLITS))


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: int, max_len: int, block_n: int
) -> None:
    """The layout :func:`decode_attention` assumes (see its ``Shape``); a mismatch is a caller bug."""
    rows, kv_heads, head_dim = q.shape
    assert supported(head_dim, q.dtype), f"head dim {head_dim} / {q.dtype} not supported"
    assert k.shape[2:] == (kv_heads, head_dim) and v.shape == k.shape
    assert k.dtype == v.dtype == q.dtype
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    assert b <= k.shape[0] and rows % max(b, 1) == 0 and 0 < max_len <= k.shape[1]
    assert block_n >= 16 and block_n & (block_n - 1) == 0


def _key_chunks(max_len: int, num_splits: int, block_n: int) -> tuple[int, int]:
    """Keys per chunk and the chunk count: chunks are whole key blocks, so no block straddles two."""
    chunk = triton.cdiv(triton.cdiv(max_len, max(num_splits, 1)), block_n) * block_n
    return chunk, triton.cdiv(max_len, chunk)


def decode_attention(
    q_packed: torch.Tensor,
    k_cache_layer: torch.Tensor,
    v_cache_layer: torch.Tensor,
    lengths_B: torch.Tensor,
    max_len: int,
    scale: float | None = None,
    *,
    num_splits: int | None = None,
    unpacked_out: bool = False,
    block_n: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """Attention of one query per slot 0..B-1 over that slot's first ``lengths_B[b]`` keys.

    No host sync and no allocation that depends on data: safe to capture in a CUDA graph with
    ``lengths_B`` as a persistent buffer updated between replays.

    Args:
        q_packed: Queries in the grouped-query packed layout:
            ``q_packed[b * G + g, j]`` is query head ``j * G + g`` of row b.
        k_cache_layer: One layer's key cache; only slots 0..B-1 are read.
        v_cache_layer: One layer's value cache, same layout.
        lengths_B: Valid keys of each slot (positions 0..len-1), at least 1.
        max_len: A bound on ``lengths_B`` that stays fixed across graph replays (at most L);
            it picks the split count, and lengths beyond it are clamped to it.
        scale: Score scale, ``Dh ** -0.5`` when None.
        num_splits: Key chunks per (slot, kv head); None picks them from the shapes
            (:func:`num_key_splits`).
        unpacked_out: Write the output as (B, H, Dh), query head j * G + g at [b, j * G + g] (the
            model's layout, what the out projection reads), instead of the packed layout: saves
            the copy that would unpack it.
        block_n: Keys per loop iteration (a power of two, at least 16); None: 128 for head dims up
            to 64 (9.8 us against 11.1 us at 64 on an H200 at the Qwen2.5-0.5B decode shape, where
            flash takes 28 us), else 64 (bounds the shared memory of the pipelined key loop).
        num_warps: Warps per program.
        num_stages: Software-pipelining stages of the key loop.

    Returns:
        The attention output in the packed layout of ``q_packed`` (or unpacked), in its dtype.

    Shape:
        q_packed: (B * G, K, Dh) contiguous; k_cache_layer, v_cache_layer: (S, L, K, Dh)
        contiguous with S >= B; lengths_B: (B,) int32 (any integer dtype works). Returns
        (B * G, K, Dh), or (B, H, Dh) with ``unpacked_out``.
    """
    rows, kv_heads, head_dim = q_packed.shape
    b = lengths_B.shape[0]
    if block_n is None:
        block_n = 128 if head_dim <= 64 else 64
    _check_inputs(q_packed, k_cache_layer, v_cache_layer, b, max_len, block_n)
    group = rows // b if b else 1
    block_g = max(16, triton.next_power_of_2(group))  # tl.dot needs 16 rows at least
    qk_scale = (head_dim**-0.5 if scale is None else scale) * 1.4426950408889634  # log2(e)
    if num_splits is None:
        num_splits = num_key_splits(b * kv_heads, max_len, q_packed.device)
    chunk, splits = _key_chunks(max_len, num_splits, block_n)
    out = torch.empty_like(q_packed)
    if unpacked_out:
        out = out.view(b, group * kv_heads, head_dim) if b else out.view(0, kv_heads, head_dim)
    if b == 0:
        return out
    consts = dict(
        GROUP=group, NUM_KV_HEADS=kv_heads, HEAD_DIM=head_dim, BLOCK_G=block_g, UNPACKED_OUT=unpacked_out
    )
    launch = dict(BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)
    args = (q_packed, k_cache_layer, v_cache_layer, lengths_B, out, max_len, chunk, splits, qk_scale)
    _launch(*args, consts, launch)
    return out


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths_B: torch.Tensor,
    out: torch.Tensor,
    max_len: int,
    chunk: int,
    splits: int,
    qk_scale: float,
    consts: dict[str, Any],
    launch: dict[str, Any],
) -> None:
    """The attention kernel over (slot, kv head, key chunk), then the merge of the chunks if several."""
    b, kv_heads, group, head_dim = (
        lengths_B.shape[0],
        consts["NUM_KV_HEADS"],
        consts["GROUP"],
        consts["HEAD_DIM"],
    )
    if splits > 1:
        part_m = torch.empty((b, kv_heads, splits, group), dtype=torch.float32, device=q.device)
        part_l = torch.empty_like(part_m)
        part_acc = torch.empty((b, kv_heads, splits, group, head_dim), dtype=torch.float32, device=q.device)
    else:
        part_m = part_l = part_acc = out  # unused: the kernel stores the output itself
    _decode_attention_kernel[(b, kv_heads, splits)](
        q,
        k,
        v,
        lengths_B,
        out,
        part_m,
        part_l,
        part_acc,
        k.shape[1],
        max_len,
        chunk,
        splits,
        qk_scale,
        **consts,
        **launch,
        SPLIT=splits > 1,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        EMULATE_BF16=q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1",
    )
    if splits > 1:
        _merge_splits_kernel[(b, kv_heads)](part_m, part_l, part_acc, out, splits, **consts, num_warps=4)
