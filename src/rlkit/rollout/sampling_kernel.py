"""One-pass token sampling in Triton: temperature, Gumbel-max noise, argmax and log-prob together.

:func:`rlkit.rollout.sampling.sample_tokens` makes about eight passes over the (B, V) logits in
fp32 (upcast, log-softmax, noise, its log, the race, the argmax, the gathers); at a 152k vocabulary
and 256 rows that is about 0.6 ms per decode step on an H200, a third of the model's forward.
Without truncation or a repetition penalty, one read of the logits in the model's dtype is enough:
each row's vocabulary is split over a few programs, each streaming its columns once while keeping
an online log-sum-exp and the running argmax of ``logits / T + Gumbel noise`` (the Gumbel-max
trick, the same exponential race as the PyTorch path: ``argmax(log p - log E)`` with
``E = -log U``); a second, tiny kernel combines each row's partial states and loads the chosen
token's logit for its log-prob.

The noise is counter-based (Philox): row ``r`` draws from the stream keyed by ``keys[r]`` at
counter ``(column, counters[r])``, where the engine passes each sequence's key and the position of
the token being fed. A sample therefore depends on its key, its position and the logits only: not
on the batch it shares or on any generator state, and the kernel reads everything from device
memory, so it can run inside a captured CUDA graph.

Returns what ``sample_tokens`` returns: the token, its log-prob under ``softmax(logits / T)`` (T = 1
for greedy rows, temperature <= 0) and its log-prob under the distribution sampled from (the same
without truncation; 0 for a greedy row's point mass).

Only imported where :func:`rlkit.hardware.kernels.use_triton` says Triton runs.

Shape legend: B = rows, V = vocabulary.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Columns per loop step (fewer for a small vocabulary); each Philox call yields four uniforms, one
# per quarter of the block.
_BLOCK = 2048
# Loop steps per program: a row's vocabulary is split over programs of about this many blocks.
_BLOCKS_PER_PROGRAM = 4


@triton.jit
def _consume(base, cols, vocab, temp, r, greedy, m, s, best, best_idx):
    """Fold the columns ``cols`` into per-lane running states: log-sum-exp (m, s) and argmax.

    Lanes only combine at the end of the program: a reduction across the block at every step
    would synchronise all warps per step. The score is ``logits / T`` plus Gumbel noise from the
    random ints ``r`` (no noise for a greedy row); a lane keeps its first column of the largest
    score, and the lanes' tie-break takes the lowest column, as ``torch.argmax`` does.
    """
    mask = cols < vocab
    x = tl.load(base + cols, mask=mask, other=float("-inf")).to(tl.float32) / temp
    new_m = tl.maximum(m, x)
    # A lane past the vocabulary has seen only -inf: shift by 0 there, so no inf - inf.
    shift = tl.where(new_m > float("-inf"), new_m, 0.0)
    s = s * tl.exp(m - shift) + tl.exp(x - shift)
    # -log(-log u): u = 0 gives -inf, a column that never wins; u < 1 always.
    noise = -tl.log(-tl.log(tl.random.uint_to_uniform_float(r)))
    score = tl.where(mask, tl.where(greedy, x, x + noise), float("-inf"))
    take = score > best
    return new_m, s, tl.where(take, score, best), tl.where(take, cols, best_idx)


@triton.jit
def _partial_kernel(
    logits_ptr,
    stride,
    vocab,
    span,
    temperature_ptr,
    keys_ptr,
    counters_ptr,
    part_m_ptr,
    part_s_ptr,
    part_best_ptr,
    part_idx_ptr,
    QUARTER: tl.constexpr,
):
    """One program: columns [split * span, (split + 1) * span) of one row -> its partial state."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    temperature = tl.load(temperature_ptr + row)
    greedy = temperature <= 0.0
    temp = tl.where(greedy, 1.0, temperature)
    key = tl.load(keys_ptr + row)
    counter = tl.load(counters_ptr + row).to(tl.int64)
    base = logits_ptr + row * stride
    offs = tl.arange(0, QUARTER)
    c1 = tl.zeros([QUARTER], dtype=tl.uint32) + (counter & 0xFFFFFFFF).to(tl.uint32)
    c2 = tl.zeros([QUARTER], dtype=tl.uint32) + (counter >> 32).to(tl.uint32)
    zero = tl.zeros([QUARTER], dtype=tl.uint32)
    m = tl.full([QUARTER], float("-inf"), tl.float32)
    s = tl.zeros([QUARTER], dtype=tl.float32)
    best = tl.full([QUARTER], float("-inf"), tl.float32)
    best_idx = tl.zeros([QUARTER], dtype=tl.int32)
    lo = split * span
    hi = tl.minimum(lo + span, vocab)
    for start in range(lo, hi, 4 * QUARTER):
        # One Philox call per 4 columns: column start + j * QUARTER + i takes output j of counter
        # start / 4 + i, so the noise of a column does not depend on how the row is split.
        r0, r1, r2, r3 = tl.philox(key, (start // 4 + offs).to(tl.uint32), c1, c2, zero)
        cols = start + offs
        m, s, best, best_idx = _consume(base, cols, vocab, temp, r0, greedy, m, s, best, best_idx)
        cols += QUARTER
        m, s, best, best_idx = _consume(base, cols, vocab, temp, r1, greedy, m, s, best, best_idx)
        cols += QUARTER
        m, s, best, best_idx = _consume(base, cols, vocab, temp, r2, greedy, m, s, best, best_idx)
        cols += QUARTER
        m, s, best, best_idx = _consume(base, cols, vocab, temp, r3, greedy, m, s, best, best_idx)
    top = tl.max(m, 0)
    total = tl.sum(tl.where(m > float("-inf"), s * tl.exp(m - top), 0.0), 0)
    top_score = tl.max(best, 0)
    first = tl.min(tl.where(best == top_score, best_idx, 2147483647), 0)
    out = row * splits + split
    tl.store(part_m_ptr + out, top)
    tl.store(part_s_ptr + out, total)
    tl.store(part_best_ptr + out, top_score)
    tl.store(part_idx_ptr + out, first)


@triton.jit
def _combine_kernel(
    logits_ptr,
    stride,
    temperature_ptr,
    part_m_ptr,
    part_s_ptr,
    part_best_ptr,
    part_idx_ptr,
    tokens_ptr,
    logprobs_ptr,
    sampling_ptr,
    SPLITS: tl.constexpr,
    SPLITS_POW2: tl.constexpr,
):
    """One program per row: combine the partial states, write the token and its log-probs."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, SPLITS_POW2)
    mask = offs < SPLITS
    part = row * SPLITS + offs
    m = tl.load(part_m_ptr + part, mask=mask, other=float("-inf"))
    s = tl.load(part_s_ptr + part, mask=mask, other=0.0)
    best = tl.load(part_best_ptr + part, mask=mask, other=float("-inf"))
    idx = tl.load(part_idx_ptr + part, mask=mask, other=2147483647)
    top = tl.max(m, 0)
    lse = top + tl.log(tl.sum(tl.where(m > float("-inf"), s * tl.exp(m - top), 0.0), 0))
    top_score = tl.max(best, 0)
    token = tl.min(tl.where(best == top_score, idx, 2147483647), 0).to(tl.int64)
    temperature = tl.load(temperature_ptr + row)
    greedy = temperature <= 0.0
    temp = tl.where(greedy, 1.0, temperature)
    logprob = tl.load(logits_ptr + row * stride + token).to(tl.float32) / temp - lse
    tl.store(tokens_ptr + row, token)
    tl.store(logprobs_ptr + row, logprob)
    tl.store(sampling_ptr + row, tl.where(greedy, 0.0, logprob))


def gumbel_sample(
    logits_BV: torch.Tensor,
    temperature_B: torch.Tensor,
    keys_B: torch.Tensor,
    counters_B: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one token per row from ``softmax(logits / T)`` (argmax where T <= 0), in one pass.

    Two launches: the partial states of each (row, vocabulary split), then their combination.

    Args:
        logits_BV: Raw logits in any float dtype (read once, upcast in registers); rows contiguous.
        temperature_B: fp32 temperatures; <= 0 means greedy.
        keys_B: int64 noise keys, one stream per sequence.
        counters_B: int64 counters within each stream (the engine passes positions); a row's noise
            is fixed by (key, counter), so feeding the same pair twice gives the same token.

    Shape:
        logits_BV: (B, V); the rest (B,). Returns tokens (B,) long, logprobs (B,) fp32 and
        sampling_logprobs (B,) fp32 (0 for greedy rows).
    """
    rows, vocab = logits_BV.shape
    if logits_BV.stride(1) != 1:
        raise ValueError("gumbel_sample needs rows of contiguous logits")
    device = logits_BV.device
    tokens = torch.empty(rows, dtype=torch.long, device=device)
    logprobs = torch.empty(rows, dtype=torch.float32, device=device)
    sampling = torch.empty(rows, dtype=torch.float32, device=device)
    if rows == 0:
        return tokens, logprobs, sampling
    quarter = max(16, min(_BLOCK // 4, triton.next_power_of_2(-(-vocab // 4))))
    step = 4 * quarter
    span = step * _BLOCKS_PER_PROGRAM
    splits = -(-vocab // span)
    parts = [torch.empty(rows * splits, dtype=torch.float32, device=device) for _ in range(3)]  # m, s, best
    part_idx = torch.empty(rows * splits, dtype=torch.int32, device=device)
    temperature_B = temperature_B.float().contiguous()
    _partial_kernel[(rows, splits)](
        logits_BV,
        logits_BV.stride(0),
        vocab,
        span,
        temperature_B,
        keys_B.long().contiguous(),
        counters_B.long().contiguous(),
        *parts,
        part_idx,
        QUARTER=quarter,
        num_warps=4,
    )
    _combine_kernel[(rows,)](
        logits_BV,
        logits_BV.stride(0),
        temperature_B,
        *parts,
        part_idx,
        tokens,
        logprobs,
        sampling,
        SPLITS=splits,
        SPLITS_POW2=triton.next_power_of_2(splits),
    )
    return tokens, logprobs, sampling
