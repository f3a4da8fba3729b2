"""Triton kernels for one chunk of :func:`rlkit.models.logprobs.token_logprobs`.

The PyTorch path upcasts each (C x V) chunk of logits to fp32 and makes about a dozen passes over
it (cast, logsumexp, subtract, exp, multiply, scatter, cast back). These two kernels read the
logits in the dtype the LM-head GEMM wrote them in and keep every intermediate in registers:

- ``chunk_forward``: one pass per row with an online log-sum-exp; returns the log-sum-exp, the
  label's log-prob and, when asked, the entropy, all in fp32.
- ``chunk_backward_``: one pass that overwrites the logits with their gradient (in the logits'
  dtype, which is what the following GEMMs consume anyway).

The math is the PyTorch path's, in fp32: ``z = logits / T``, ``lse = logsumexp(z)``,
``logp = z - lse``, ``H = -sum(p * logp)``, and the gradient of ``g_lp * logp_y + g_H * H`` with
respect to the raw logits, ``(g_lp * (onehot_y - p) - g_H * p * (logp + H)) / T``.

Only imported where :func:`rlkit.hardware.kernels.use_triton` says Triton runs.

Shape legend: C = rows of the chunk, V = vocabulary.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK_V = 2048


@triton.jit
def _forward_kernel(
    logits_ptr,
    labels_ptr,
    lse_ptr,
    logp_ptr,
    entropy_ptr,
    stride_row,
    vocab,
    inv_temp,
    WITH_ENTROPY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    base = logits_ptr + row.to(tl.int64) * stride_row
    offs = tl.arange(0, BLOCK)
    # Per-lane online log-sum-exp: lane i sees elements i, i + BLOCK, ...; combined at the end.
    # -1e30 rather than -inf as the empty max keeps (m - m_new) * s at 0 instead of NaN.
    m = tl.full([BLOCK], -1e30, tl.float32)  # running max of z
    s = tl.zeros([BLOCK], tl.float32)  # sum of exp(z - m)
    a = tl.zeros([BLOCK], tl.float32)  # sum of exp(z - m) * (z - m), for the entropy
    for start in range(0, vocab, BLOCK):
        mask = start + offs < vocab
        z = tl.load(base + start + offs, mask=mask, other=-float("inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, z)
        scale = tl.exp(m - m_new)
        shifted = tl.where(mask, z - m_new, 0.0)
        e = tl.where(mask, tl.exp(shifted), 0.0)
        if WITH_ENTROPY:
            # rebase the old sum to the new max: sum e^(z-m')(z-m') = scale * (a + (m - m') * s)
            a = scale * (a + (m - m_new) * s) + tl.where(e > 0, e * shifted, 0.0)
        s = s * scale + e
        m = m_new
    m_row = tl.max(m, axis=0)
    w = tl.exp(m - m_row)
    s_row = tl.sum(s * w, axis=0)
    log_s = tl.log(s_row)
    lse = m_row + log_s
    label = tl.load(labels_ptr + row)
    z_label = tl.load(base + label).to(tl.float32) * inv_temp
    tl.store(lse_ptr + row, lse)
    tl.store(logp_ptr + row, z_label - lse)
    if WITH_ENTROPY:
        # H = lse - E[z] = log s - a / s, both relative to the max (large logits do not cancel)
        a_row = tl.sum(w * (a + (m - m_row) * s), axis=0)
        tl.store(entropy_ptr + row, log_s - a_row / s_row)


@triton.jit
def _backward_kernel(
    logits_ptr,
    labels_ptr,
    lse_ptr,
    grad_logp_ptr,
    grad_entropy_ptr,
    entropy_ptr,
    stride_row,
    vocab,
    inv_temp,
    WITH_ENTROPY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    block = tl.program_id(1)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    mask = offs < vocab
    ptrs = logits_ptr + row.to(tl.int64) * stride_row + offs
    z = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32) * inv_temp
    logp = z - tl.load(lse_ptr + row)
    p = tl.exp(logp)
    g_lp = tl.load(grad_logp_ptr + row)
    label = tl.load(labels_ptr + row)
    grad = g_lp * (tl.where(offs == label, 1.0, 0.0) - p)
    if WITH_ENTROPY:
        g_h = tl.load(grad_entropy_ptr + row)
        h = tl.load(entropy_ptr + row)
        grad -= g_h * p * (logp + h)
    tl.store(ptrs, (grad * inv_temp).to(logits_ptr.dtype.element_ty), mask=mask)


def chunk_forward(
    logits_CV: torch.Tensor, labels_C: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-sum-exp, label log-prob and (optionally) entropy of ``logits / temperature``, per row.

    Shape:
        logits_CV: (C, V), rows contiguous; labels_C: (C,) int. Returns three (C,) fp32 tensors
        (the third None without ``with_entropy``).
    """
    rows, vocab = logits_CV.shape
    assert logits_CV.stride(1) == 1, "logits rows must be contiguous"
    lse = torch.empty(rows, dtype=torch.float32, device=logits_CV.device)
    logp = torch.empty_like(lse)
    entropy = torch.empty_like(lse) if with_entropy else lse  # unused pointer when not asked
    if rows:
        _forward_kernel[(rows,)](
            logits_CV,
            labels_C,
            lse,
            logp,
            entropy,
            logits_CV.stride(0),
            vocab,
            1.0 / temperature,
            WITH_ENTROPY=with_entropy,
            BLOCK=_BLOCK_V,
            num_warps=8,
        )
    return lse, logp, (entropy if with_entropy else None)


def chunk_backward_(
    logits_CV: torch.Tensor,
    labels_C: torch.Tensor,
    lse_C: torch.Tensor,
    grad_logp_C: torch.Tensor,
    temperature: float,
    grad_entropy_C: torch.Tensor | None = None,
    entropy_C: torch.Tensor | None = None,
) -> torch.Tensor:
    """Overwrite ``logits_CV`` with the gradient of ``sum(g_lp * logp_y + g_H * H)`` w.r.t. it.

    Shape:
        logits_CV: (C, V) (rows contiguous; overwritten); labels_C: (C,) int; lse_C, grad_logp_C,
        grad_entropy_C, entropy_C: (C,) fp32. Returns ``logits_CV``.
    """
    rows, vocab = logits_CV.shape
    assert logits_CV.stride(1) == 1, "logits rows must be contiguous"
    with_entropy = grad_entropy_C is not None and entropy_C is not None
    if rows:
        grid = (rows, triton.cdiv(vocab, _BLOCK_V))
        _backward_kernel[grid](
            logits_CV,
            labels_C,
            lse_C,
            grad_logp_C,
            grad_entropy_C if with_entropy else lse_C,
            entropy_C if with_entropy else lse_C,
            logits_CV.stride(0),
            vocab,
            1.0 / temperature,
            WITH_ENTROPY=with_entropy,
            BLOCK=_BLOCK_V,
            num_warps=4,
        )
    return logits_CV
