"""Entropy of the policy's token distributions, computed from logits in chunks.

Shapes (legend in :mod:`rlkit.algos._masked`): ``B`` responses, ``L`` response length, ``V`` vocabulary.

A ``(B, L, V)`` bf16 logits tensor of a 150k vocabulary is already large; a float32 copy of it
(what ``logits.float()`` or ``softmax`` in float32 would make) doubles that. Here rows are processed
``chunk_size`` at a time: each chunk is cast to float32, reduced, and dropped, in the forward pass and
again in the backward pass (which recomputes instead of saving the softmax), so the extra memory is
``chunk_size x V`` float32 whatever ``B x L``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlkit.algos.aggregation import Count, agg_loss

__all__ = ["compute_entropy_loss", "entropy_from_logits"]


def _chunk_stats(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Float32 logits, log-softmax and probabilities of one chunk of rows; ``-inf`` logits give p = 0."""
    z = logits.float()
    log_p = torch.log_softmax(z, dim=-1)
    return z, log_p, log_p.exp()


def _chunk_entropy(logits: Tensor) -> Tensor:
    _, log_p, p = _chunk_stats(logits)
    # p * log p is 0 where p is 0, including -inf logits (masked vocabulary), where it would be nan.
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(dim=-1)


class _ChunkedEntropy(torch.autograd.Function):
    """Entropy per row with a backward pass that recomputes the softmax chunk by chunk."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, chunk_size: int) -> Tensor:
        rows = logits.reshape(-1, logits.shape[-1])
        starts = range(0, rows.shape[0], chunk_size)
        entropy = torch.cat([_chunk_entropy(rows[start : start + chunk_size]) for start in starts])
        ctx.save_for_backward(logits, entropy)
        ctx.chunk_size = chunk_size
        return entropy.reshape(logits.shape[:-1])

    @staticmethod
    def backward(ctx: Any, grad_entropy: Tensor) -> tuple[Tensor, None]:
        logits, entropy = ctx.saved_tensors
        rows = logits.reshape(-1, logits.shape[-1])
        grad_rows = grad_entropy.reshape(-1).float()
        grads = []
        for start in range(0, rows.shape[0], ctx.chunk_size):
            stop = start + ctx.chunk_size
            _, log_p, p = _chunk_stats(rows[start:stop])
            # dH/dz_j = -p_j * (log p_j + H).
            inner = torch.where(p > 0, log_p + entropy[start:stop, None], torch.zeros_like(p))
            grads.append((-p * inner * grad_rows[start:stop, None]).to(logits.dtype))
        return torch.cat(grads).reshape(logits.shape), None


def entropy_from_logits(logits: Tensor, chunk_size: int = 1024) -> Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` of ``softmax(logits)`` along the last dimension.

    Each chunk of ``chunk_size`` rows (``B x L`` flattened) is cast to float32 separately; the whole
    tensor is never copied to float32, in the forward or the backward pass. Differentiable.

    Args:
        logits: Logits in any float dtype (bf16 typical), any leading dimensions.
        chunk_size: Rows processed at once; memory is ``chunk_size x V`` float32.

    Returns:
        Float32 entropies, one per row.

    Shape:
        logits: (B, L, V), or any (..., V).
        return: (B, L), or (...).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    # torch.autograd.Function.apply carries no annotations in torch's stubs.
    entropy: Tensor = _ChunkedEntropy.apply(logits, chunk_size)  # type: ignore[no-untyped-call]
    return entropy


def compute_entropy_loss(
    logits: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str = "token-mean",
    chunk_size: int = 1024,
    dp_size: int = 1,
    batch_num_tokens: Count | None = None,
    global_batch_size: Count | None = None,
    loss_scale_factor: Count | None = None,
) -> Tensor:
    """Aggregated entropy (verl's ``compute_entropy_loss``); the actor subtracts ``entropy_coeff`` times it.

    Shape:
        logits: (B, L, V).
        response_mask: (B, L).
    """
    return agg_loss(
        entropy_from_logits(logits, chunk_size),
        response_mask,
        loss_agg_mode,
        dp_size=dp_size,
        batch_num_tokens=batch_num_tokens,
        global_batch_size=global_batch_size,
        loss_scale_factor=loss_scale_factor,
    )
