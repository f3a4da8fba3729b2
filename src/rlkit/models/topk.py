"""Top-k log-probs per position and log-probs at given token ids, chunked over positions.

Distillation needs, for every response position, the teacher's ``k`` most likely tokens with their
log-probs (the GKD support), and the student's log-probs at those same ids, with gradients. Both are
computed ``chunk_tokens`` rows at a time like :func:`rlkit.models.logprobs.token_logprobs`: one chunk
of fp32 logits (C, V) exists at a time, never (N, V). Under autograd the student's chunks are
checkpointed, so backward recomputes each chunk's logits instead of keeping them.

Shape legend: N = gathered positions, D = hidden size, V = vocabulary, K = top-k, C = chunk rows.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from rlkit.models.logprobs import _chunk_logits

__all__ = ["token_logprobs_at", "token_sum_pi_squared", "token_topk_logprobs"]


def _check(temperature: float, chunk_tokens: int) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be > 0, got {chunk_tokens}")


@torch.no_grad()
def token_topk_logprobs(
    hidden_ND: torch.Tensor,
    weight_VD: torch.Tensor,
    labels_N: torch.Tensor,
    k: int,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs of ``labels_N`` and the ``k`` largest log-probs (with their ids) at every position.

    Args:
        hidden_ND: final hidden states at the positions before each label.
        weight_VD: the LM head's weight.
        labels_N: the sampled token ids.
        k: tokens kept per position (``1 <= k <= V``).
        temperature: the logits are divided by it (> 0).
        chunk_tokens: rows of logits computed at once.
        softcap: Gemma-2's logit soft-cap, or None.

    Returns:
        ``(logp_N, topk_logp_NK, topk_ids_NK)``: fp32, fp32 (descending), int64.

    Raises:
        ValueError: ``k`` outside ``[1, V]``, or a non-positive temperature or chunk size.
    """
    _check(temperature, chunk_tokens)
    vocab = weight_VD.shape[0]
    if not 1 <= k <= vocab:
        raise ValueError(f"top-k must be in [1, {vocab}] (the vocabulary), got {k}")
    num = hidden_ND.shape[0]
    logp = torch.empty(num, dtype=torch.float32, device=hidden_ND.device)
    top_logp = torch.empty(num, k, dtype=torch.float32, device=hidden_ND.device)
    top_ids = torch.empty(num, k, dtype=torch.long, device=hidden_ND.device)
    for start in range(0, num, chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        log_probs = torch.log_softmax(_chunk_logits(hidden_ND[rows], weight_VD, temperature, softcap), -1)
        logp[rows] = log_probs.gather(-1, labels_N[rows].long().unsqueeze(-1)).squeeze(-1)
        top_logp[rows], top_ids[rows] = log_probs.topk(k, dim=-1)
    return logp, top_logp, top_ids


@torch.no_grad()
def token_sum_pi_squared(
    hidden_ND: torch.Tensor,
    weight_VD: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    softcap: float | None = None,
) -> torch.Tensor:
    """``sum_v pi(v)^2`` of the temperature-scaled distribution at each position (OTB's input), fp32.

    Shape:
        hidden_ND: (N, D); weight_VD: (V, D); returns (N,).
    """
    _check(temperature, chunk_tokens)
    out = torch.empty(hidden_ND.shape[0], dtype=torch.float32, device=hidden_ND.device)
    for start in range(0, hidden_ND.shape[0], chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        probs = torch.softmax(_chunk_logits(hidden_ND[rows], weight_VD, temperature, softcap), -1)
        out[rows] = probs.square().sum(-1)
    return out


def _chunk_at(
    h_CD: torch.Tensor, w_VD: torch.Tensor, ids_CK: torch.Tensor, temperature: float, softcap: float | None
) -> torch.Tensor:
    logits = _chunk_logits(h_CD, w_VD, temperature, softcap)
    return torch.log_softmax(logits, -1).gather(-1, ids_CK)


def token_logprobs_at(
    hidden_ND: torch.Tensor,
    weight_VD: torch.Tensor,
    ids_NK: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    softcap: float | None = None,
) -> torch.Tensor:
    """Log-probs (normalised over the whole vocabulary) of the token ids ``ids_NK`` at each position.

    Differentiable w.r.t. ``hidden_ND`` and ``weight_VD``; under autograd each chunk is checkpointed
    (its logits are recomputed in backward), so memory holds one chunk of logits at a time.

    Returns:
        ``logp_NK`` fp32.
    """
    _check(temperature, chunk_tokens)
    ids = ids_NK.long()
    parts = []
    for start in range(0, hidden_ND.shape[0], chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled() and (hidden_ND.requires_grad or weight_VD.requires_grad):
            part = checkpoint(
                _chunk_at, hidden_ND[rows], weight_VD, ids[rows], temperature, softcap, use_reentrant=False
            )
        else:
            part = _chunk_at(hidden_ND[rows], weight_VD, ids[rows], temperature, softcap)
        parts.append(part)
    if not parts:
        return torch.zeros(0, ids.shape[-1], dtype=torch.float32, device=hidden_ND.device)
    return torch.cat(parts)
