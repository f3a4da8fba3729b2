"""Token sampling in Triton without a random number per vocabulary entry: temperature, inverse-CDF
draw, argmax and log-prob in one read of the logits plus a scan of one slice of each row.

:func:`rlkit.rollout.sampling.sample_tokens` makes about eight passes over the (B, V) logits in
fp32 (upcast, log-softmax, noise, its log, the race, the argmax, the gathers); at a 152k vocabulary
and 256 rows that is about 0.6 ms per decode step on an H200, a third of the model's forward.
Without truncation or a repetition penalty two kernels do it:

1. each row's vocabulary is split over a few programs; each streams its columns once, in the
   model's dtype, keeping per lane the running maximum of ``logits / T``, the sum of
   ``exp(logits / T - max)`` (one exponential per column) and the maximum's first column, and
   writes one partial state per (row, split);
2. one program per row combines its splits into the row's log-sum-exp, draws one uniform ``u``,
   finds the split holding the quantile ``u`` of the row's probability mass from the splits'
   sums, and scans that split's columns (a prefix sum) for the token whose cumulative mass first
   passes it: an exact sample of ``softmax(logits / T)`` (inverse-CDF sampling), up to fp32
   rounding of the sums, which only moves mass of order 1e-7 of a row between neighbouring
   columns. A greedy row (T <= 0) takes the first maximum, as ``torch.argmax`` does.

An earlier version drew Gumbel noise for every column (the exponential race of the PyTorch path):
the counter-based random numbers and two logarithms per column made it compute-bound at about
four times the time of reading the logits. One uniform per row is all inverse-CDF sampling needs.

The uniform is counter-based (Philox): row ``r`` draws from the stream keyed by ``keys[r]`` at
counter ``counters[r]``, where the engine passes each sequence's key and the position of the
token being fed. A sample therefore depends on its key, its position and the logits only: not on
the batch it shares or on any generator state, and the kernels read everything from device
memory, so they can run inside a captured CUDA graph.

Returns what ``sample_tokens`` returns: the token, its log-prob under ``softmax(logits / T)`` (T = 1
for greedy rows) and its log-prob under the distribution sampled from (the same without
truncation; 0 for a greedy row's point mass).

Only imported where :func:`rlkit.hardware.kernels.use_triton` says Triton runs.

Shape legend: B = rows, V = vocabulary, P = splits of a row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Columns per loop step (fewer for a small vocabulary).
_BLOCK = 2048
# Loop steps per program: a row's vocabulary is split over programs of about this many blocks.
_BLOCKS_PER_PROGRAM = 4
_NO_COLUMN = tl.constexpr(2147483647)  # "no column yet" in the argmin reductions


@triton.jit
def _inverse_temperature(temperature_ptr, row):
    """1 / T of a row, and whether it is greedy (T <= 0: its logits are taken unscaled)."""
    temperature = tl.load(temperature_ptr + row)
    greedy = temperature <= 0.0
    return tl.where(greedy, 1.0, 1.0 / tl.where(greedy, 1.0, temperature)), greedy


@triton.jit
def _partial_kernel(
    logits_ptr,
    stride,
    vocab,
    span,
    temperature_ptr,
    part_m_ptr,
    part_s_ptr,
    part_idx_ptr,
    BLOCK: tl.constexpr,
):
    """One program: columns [split * span, (split + 1) * span) of one row -> its partial state
    (maximum of logits / T, sum of exp(logits / T - maximum), the maximum's first column).

    Lanes only combine at the end of the program: a reduction across the block at every step
    would synchronise all warps per step.
    """
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    inv, _ = _inverse_temperature(temperature_ptr, row)
    base = logits_ptr + row * stride
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    idx = tl.zeros([BLOCK], dtype=tl.int32)
    lo = split * span
    hi = tl.minimum(lo + span, vocab)
    for start in range(lo, hi, BLOCK):
        cols = start + offs
        x = tl.load(base + cols, mask=cols < hi, other=float("-inf")).to(tl.float32) * inv
        # One exponential per column: the larger of x and m is the reference of the new sum.
        # A column past the row (x = -inf) changes nothing, also while m is still -inf.
        up = x > m
        e = tl.exp(tl.where(up, m - x, x - m))
        s = tl.where(up, s * e + 1.0, tl.where(x > float("-inf"), s + e, s))
        m = tl.where(up, x, m)
        idx = tl.where(up, cols, idx)  # strictly greater: a lane keeps its first maximum
    top = tl.max(m, 0)
    out = row * splits + split
    tl.store(part_m_ptr + out, top)
    tl.store(part_s_ptr + out, tl.sum(tl.where(m > float("-inf"), s * tl.exp(m - top), 0.0), 0))
    tl.store(part_idx_ptr + out, tl.min(tl.where(m == top, idx, _NO_COLUMN), 0))


@triton.jit
def _draw_kernel(
    logits_ptr,
    stride,
    vocab,
    span,
    temperature_ptr,
    keys_ptr,
    counters_ptr,
    part_m_ptr,
    part_s_ptr,
    part_idx_ptr,
    tokens_ptr,
    logprobs_ptr,
    sampling_ptr,
    SPLITS: tl.constexpr,
    SPLITS_POW2: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per row: the row's log-sum-exp from its splits, one uniform, the split that
    holds it, the token found by a prefix sum over that split; writes the token and log-probs."""
    row = tl.program_id(0).to(tl.int64)
    inv, greedy = _inverse_temperature(temperature_ptr, row)
    offs = tl.arange(0, SPLITS_POW2)
    valid = offs < SPLITS
    part = row * SPLITS + offs
    m = tl.load(part_m_ptr + part, mask=valid, other=float("-inf"))
    s = tl.load(part_s_ptr + part, mask=valid, other=0.0)
    idx = tl.load(part_idx_ptr + part, mask=valid, other=_NO_COLUMN)
    top = tl.max(m, 0)
    weight = tl.where(m > float("-inf"), s * tl.exp(m - top), 0.0)  # each split's mass, x exp(-top)
    lse = top + tl.log(tl.sum(weight, 0))
    first_max = tl.min(tl.where(m == top, idx, _NO_COLUMN), 0)
    # One uniform in [0, 1) from the row's stream at its counter.
    key = tl.load(keys_ptr + row)
    counter = tl.load(counters_ptr + row).to(tl.int64)
    lo32 = tl.zeros([SPLITS_POW2], dtype=tl.uint32) + (counter & 0xFFFFFFFF).to(tl.uint32)
    hi32 = tl.zeros([SPLITS_POW2], dtype=tl.uint32) + (counter >> 32).to(tl.uint32)
    zero = tl.zeros([SPLITS_POW2], dtype=tl.uint32)
    r, _, _, _ = tl.philox(key, lo32, hi32, zero, zero)
    u = tl.max(tl.random.uint_to_uniform_float(r), 0)  # every lane drew the same number
    # The split holding the quantile u: the first whose cumulative mass passes it (never one
    # without mass, should rounding put the target at the very end).
    cum = tl.cumsum(weight, 0)
    target = u * tl.max(cum, 0)
    chosen = tl.sum((cum <= target).to(tl.int32), 0)
    chosen = tl.minimum(chosen, tl.max(tl.where(weight > 0.0, offs, 0), 0))
    residual = tl.maximum(target - tl.sum(tl.where(offs == chosen, cum - weight, 0.0), 0), 0.0)
    fallback = tl.sum(tl.where(offs == chosen, idx, 0), 0)  # the split's maximum
    # The token: the first column of that split whose cumulative mass passes the residual.
    base = logits_ptr + row * stride
    cols_b = tl.arange(0, BLOCK)
    lo = chosen * span
    hi = tl.minimum(lo + span, vocab)
    below = 0.0
    token = _NO_COLUMN
    for start in range(lo, hi, BLOCK):
        cols = start + cols_b
        inside = cols < hi
        x = tl.load(base + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv
        mass = tl.cumsum(tl.where(inside, tl.exp(x - top), 0.0), 0) + below
        token = tl.minimum(token, tl.min(tl.where(inside & (mass > residual), cols, _NO_COLUMN), 0))
        below = tl.max(mass, 0)
    token = tl.where(token == _NO_COLUMN, fallback, token)
    token = tl.minimum(tl.where(greedy, first_max, token), vocab - 1).to(tl.int64)
    logprob = tl.load(logits_ptr + row * stride + token).to(tl.float32) * inv - lse
    tl.store(tokens_ptr + row, token)
    tl.store(logprobs_ptr + row, logprob)
    tl.store(sampling_ptr + row, tl.where(greedy, 0.0, logprob))


def fused_sample(
    logits_BV: torch.Tensor,
    temperature_B: torch.Tensor,
    keys_B: torch.Tensor,
    counters_B: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one token per row from ``softmax(logits / T)`` (argmax where T <= 0).

    Two launches: the partial states of each (row, vocabulary split), then per row the draw (see
    the module's docstring). The logits are read once in full, and one split of each row again.

    Args:
        logits_BV: Raw logits in any float dtype (upcast in registers); rows contiguous.
        temperature_B: fp32 temperatures; <= 0 means greedy.
        keys_B: int64 keys, one random stream per sequence.
        counters_B: int64 counters within each stream (the engine passes positions); a row's draw
            is fixed by (key, counter), so feeding the same pair twice gives the same token.

    Shape:
        logits_BV: (B, V); the rest (B,). Returns tokens (B,) long, logprobs (B,) fp32 and
        sampling_logprobs (B,) fp32 (0 for greedy rows).
    """
    rows, vocab = logits_BV.shape
    if logits_BV.stride(1) != 1:
        raise ValueError("fused_sample needs rows of contiguous logits")
    device = logits_BV.device
    tokens = torch.empty(rows, dtype=torch.long, device=device)
    logprobs = torch.empty(rows, dtype=torch.float32, device=device)
    sampling = torch.empty(rows, dtype=torch.float32, device=device)
    if rows == 0:
        return tokens, logprobs, sampling
    block = max(16, min(_BLOCK, triton.next_power_of_2(vocab)))
    span = block * _BLOCKS_PER_PROGRAM
    splits = -(-vocab // span)
    part_m = torch.empty(rows * splits, dtype=torch.float32, device=device)
    part_s = torch.empty_like(part_m)
    part_idx = torch.empty(rows * splits, dtype=torch.int32, device=device)
    temperature_B = temperature_B.float().contiguous()
    common = (logits_BV, logits_BV.stride(0), vocab, span, temperature_B)
    _partial_kernel[(rows, splits)](*common, part_m, part_s, part_idx, BLOCK=block, num_warps=4)
    _draw_kernel[(rows,)](
        *common,
        keys_B.long().contiguous(),
        counters_B.long().contiguous(),
        part_m,
        part_s,
        part_idx,
        tokens,
        logprobs,
        sampling,
        SPLITS=splits,
        SPLITS_POW2=triton.next_power_of_2(splits),
        BLOCK=block,
        num_warps=4,
    )
    return tokens, logprobs, sampling
