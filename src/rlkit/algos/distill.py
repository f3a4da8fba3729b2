"""On-policy distillation: the student samples, a frozen teacher scores the student's own tokens.

Two forms, combinable with a task reward's advantages and with the KL-to-reference terms:

- **Reverse KL as a per-token advantage** (the policy-gradient form; Agarwal et al., GKD,
  https://arxiv.org/abs/2306.13649; Thinking Machines, "On-Policy Distillation",
  https://thinkingmachines.ai/blog/on-policy-distillation/; verl's ``use_policy_gradient`` with the
  ``k1`` estimator): on a sampled token ``y_t ~ pi_s``, ``log pi_s(y_t) - log pi_t(y_t)`` is an unbiased
  one-sample estimate of ``KL(pi_s || pi_t)`` at that position, so ``A_t = log pi_t(y_t) - log pi_s(y_t)``
  (detached) in any policy loss descends the reverse KL.
- **GKD divergences over the teacher's top-k** (TRL's ``GKDTrainer``, verl's ``forward_kl_topk``): at
  every position the teacher's ``k`` most likely tokens, plus one *tail* bucket holding the rest of the
  mass, form a distribution over ``k + 1`` outcomes for both models; the loss is the forward KL
  ``KL(t || s)``, the reverse KL ``KL(s || t)`` or the generalised JSD
  ``JSD_beta = beta KL(t || m) + (1 - beta) KL(s || m)`` with ``m = beta t + (1 - beta) s`` (TRL's
  ``generalized_jsd_loss``; ``beta = 0`` / ``1`` give the forward / reverse KL exactly, as in TRL).

The tail bucket is a deviation from verl, which sums ``p_t (log p_t - log p_s)`` over the top-k only and
clamps it at 0: that sum is not a divergence (a student equal to the teacher still gets a gradient
whenever the top-k misses mass); with the tail both are exact divergences, zero with a zero gradient
when the student equals the teacher, and the student is still pushed to put mass on the support.

Shapes (legend in :mod:`rlkit.algos._masked`): ``B`` responses, ``L`` response length, ``K`` top-k.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlkit.algos._masked import masked_mean
from rlkit.algos.aggregation import agg_loss, pick_agg_kwargs

__all__ = [
    "GKD_LOSSES",
    "compute_distill_reverse_kl_advantage",
    "compute_gkd_loss",
    "gkd_divergence",
    "with_tail",
]

GKD_LOSSES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd")
"""The divergences :func:`compute_gkd_loss` accepts."""

_TAIL_FLOOR = 1e-12


def with_tail(topk_log_probs: Tensor) -> Tensor:
    """Append the log of the mass outside the support: ``log(1 - sum_k p_k)`` (floored at 1e-12).

    Shape:
        topk_log_probs: (..., K) log-probs normalised over the whole vocabulary.
        return: (..., K + 1).
    """
    logp = topk_log_probs.float()
    mass = torch.logsumexp(logp, dim=-1, keepdim=True).exp()
    tail = torch.log((1.0 - mass).clamp(min=_TAIL_FLOOR))
    return torch.cat([logp, tail], dim=-1)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``sum p (log p - log q)`` over the last dimension."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def gkd_divergence(
    student_log_probs: Tensor, teacher_log_probs: Tensor, loss: str, beta: float = 0.5
) -> Tensor:
    """Per-position divergence between two distributions given as log-probs over the last dimension.

    ``forward_kl``: ``KL(t || s)``; ``reverse_kl``: ``KL(s || t)``; ``jsd``: TRL's generalised JSD with
    ``beta`` (``beta = 0`` is ``KL(t || s)``, ``beta = 1`` is ``KL(s || t)``).

    Raises:
        ValueError: an unknown ``loss`` or ``beta`` outside ``[0, 1]``.

    Shape:
        student_log_probs, teacher_log_probs: (..., K); return: (...).
    """
    s, t = student_log_probs.float(), teacher_log_probs.float()
    if loss == "forward_kl" or (loss == "jsd" and beta == 0.0):
        return _kl(t, s)
    if loss == "reverse_kl" or (loss == "jsd" and beta == 1.0):
        return _kl(s, t)
    if loss != "jsd":
        raise ValueError(f"unknown GKD loss {loss!r}; valid: {', '.join(GKD_LOSSES)}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"JSD beta must be in [0, 1], got {beta}")
    log_beta = torch.log(torch.tensor(beta, device=s.device))
    log_rest = torch.log(torch.tensor(1.0 - beta, device=s.device))
    mixture = torch.logsumexp(torch.stack([t + log_beta, s + log_rest]), dim=0)
    return beta * _kl(t, mixture) + (1.0 - beta) * _kl(s, mixture)


def compute_gkd_loss(
    student_topk_log_probs: Tensor,
    teacher_topk_log_probs: Tensor,
    response_mask: Tensor,
    loss: str = "forward_kl",
    beta: float = 0.5,
    loss_agg_mode: str = "token-mean",
    **agg_kwargs: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GKD loss over the teacher's top-k support plus a tail bucket, aggregated like a policy loss.

    Args:
        student_topk_log_probs: Student log-probs (over the whole vocabulary) at the teacher's top-k ids.
        teacher_topk_log_probs: The teacher's top-k log-probs (detached: the teacher is frozen).
        response_mask: 0/1 mask of the tokens that count.
        loss: ``forward_kl``, ``reverse_kl`` or ``jsd``.
        beta: The JSD's interpolation (``jsd`` only).
        loss_agg_mode: As :func:`rlkit.algos.agg_loss`; the global-batch keywords pass through.

    Returns:
        ``(loss, metrics)``: the differentiable fp32 scalar, and ``distill/divergence`` (mean per
        token), ``distill/teacher_mass`` and ``distill/student_mass`` (mean top-k mass), detached.

    Shape:
        student_topk_log_probs, teacher_topk_log_probs: (B, L, K); response_mask: (B, L).
    """
    mask = response_mask.float()
    keep = (mask > 0).unsqueeze(-1)
    # padding may hold anything (-inf log-probs of pad ids): select before any arithmetic
    student = torch.where(
        keep, student_topk_log_probs.float(), torch.full_like(student_topk_log_probs.float(), -1.0)
    )
    teacher = torch.where(keep, teacher_topk_log_probs.float(), torch.full_like(student, -1.0)).detach()
    per_token = gkd_divergence(with_tail(student), with_tail(teacher), loss, beta)
    value = agg_loss(per_token, mask, loss_agg_mode, **pick_agg_kwargs(agg_kwargs))
    return value, {
        "distill/divergence": masked_mean(per_token.detach(), mask),
        "distill/teacher_mass": masked_mean(teacher.exp().sum(-1), mask),
        "distill/student_mass": masked_mean(student.detach().exp().sum(-1), mask),
    }


@torch.no_grad()
def compute_distill_reverse_kl_advantage(
    log_prob: Tensor, teacher_log_prob: Tensor, response_mask: Tensor, clip: float | None = None
) -> Tensor:
    """Per-token advantage ``A_t = log pi_t(y_t) - log pi_s(y_t)``: minus the one-sample reverse KL.

    Added to (or used instead of) a task advantage, any policy loss then descends
    ``KL(pi_s || pi_t)`` on the student's own samples. ``clip`` bounds ``|A_t|`` (None: no bound).

    Shape:
        log_prob, teacher_log_prob, response_mask: (B, L); return: (B, L), zero outside the mask.
    """
    mask = response_mask.float()
    valid = mask > 0
    student = torch.where(valid, log_prob.float(), torch.zeros_like(mask))
    teacher = torch.where(valid, teacher_log_prob.float(), torch.zeros_like(mask))
    advantage = teacher - student
    if clip is not None:
        advantage = advantage.clamp(-clip, clip)
    return advantage * mask
