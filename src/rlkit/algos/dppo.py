"""DPPO: divergence-based trust regions instead of PPO's ratio clip (verl's ``dppo_tv`` / ``dppo_kl``).

Paper: "Rethinking the Trust Region in LLM Reinforcement Learning" (DPPO),
https://arxiv.org/abs/2602.04879.

PPO's ratio clip over-penalises low-probability tokens (a ratio of 2 on a probability of 1e-4 moves
almost nothing) and under-penalises high-probability ones (0.99 -> 0.8 stays inside ``[0.8, 1.2]``).
DPPO keeps a token's gradient only while a *divergence* between the old and new token distributions,
restricted to the binary event "this token / any other token", stays inside the threshold, and only
masks the side that moves away in the advantage's direction:

- **Binary TV** (``dppo_tv``): ``TV = p - p_old``; the token keeps its gradient when ``A > 0`` and
  ``p - p_old <= high``, or ``A <= 0`` and ``p - p_old >= -low``.
- **Binary KL** (``dppo_kl``): ``KL_b = p_old log(p_old / p) + (1 - p_old) log((1 - p_old + 1e-8) /
  (1 - p + 1e-8))``; kept when ``A > 0`` and (``KL_b <= high`` or ``p <= p_old``), or ``A <= 0`` and
  (``KL_b <= low`` or ``p >= p_old``).

Both use ``L = -A * sg(min(rho, clip_ratio_c)) * logp * keep`` (truncated importance sampling in place of
dual-clip; its gradient is ``-A min(rho, c) d logp``). Here ``clip_ratio_low``/``clip_ratio_high`` are
divergence thresholds, not ratio ranges (the paper uses 0.15 for TV and 0.05 for KL). Metrics as verl:
``actor/pg_clipfrac = mean(1 - keep)``, ``actor/pg_clipfrac_lower = mean(keep and rho > c)``,
``actor/ppo_kl = mean(-delta)``.

Shapes (legend in :mod:`rlkit.algos._masked`): all tensors ``(B, L)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlkit.algos._masked import masked_mean
from rlkit.algos.aggregation import agg_loss, pick_agg_kwargs

__all__ = ["binary_kl", "compute_policy_loss_dppo_kl", "compute_policy_loss_dppo_tv"]

Metrics = dict[str, Tensor]
_LOG_RATIO_BOUND = 20.0


def binary_kl(old_prob: Tensor, prob: Tensor, old_log_prob: Tensor, log_prob: Tensor) -> Tensor:
    """KL between the Bernoulli distributions ``(p_old, 1 - p_old)`` and ``(p, 1 - p)`` (verl's form).

    Shape:
        all inputs and the result: (B, L).
    """
    return old_prob * (old_log_prob - log_prob) + (1.0 - old_prob) * torch.log(
        (1.0 - old_prob + 1e-8) / (1.0 - prob + 1e-8)
    )


def _dppo_loss(
    keep_fn: Any,
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
    rollout_is_weights: Tensor | None,
    mode_specific: dict[str, Any],
) -> tuple[Tensor, Metrics]:
    """The DPPO surrogate shared by both divergences; ``keep_fn`` decides which tokens keep a gradient."""
    mask = response_mask.float()
    valid = mask > 0

    def clean(x: Tensor) -> Tensor:
        return torch.where(valid, x.float(), torch.zeros_like(x, dtype=torch.float32))

    old, new, adv = clean(old_log_prob), clean(log_prob), clean(advantages)
    log_ratio = torch.clamp(new - old, min=-_LOG_RATIO_BOUND, max=_LOG_RATIO_BOUND)
    ratio = torch.exp(log_ratio)
    truncated = torch.clamp(ratio, max=clip_ratio_c).detach()
    with torch.no_grad():
        keep = keep_fn(torch.exp(old), torch.exp(new), old, new, adv, clip_ratio_low, clip_ratio_high).float()
    losses = -adv * truncated * new * keep
    if rollout_is_weights is not None:
        losses = losses * rollout_is_weights.detach().float()
    loss = agg_loss(losses, mask, loss_agg_mode, **pick_agg_kwargs(mode_specific))
    return loss, {
        "actor/pg_clipfrac": masked_mean(1.0 - keep, mask).detach(),
        "actor/ppo_kl": masked_mean(-log_ratio, mask).detach(),
        "actor/pg_clipfrac_lower": masked_mean((ratio > clip_ratio_c).float() * keep, mask).detach(),
    }


def _keep_tv(
    old_p: Tensor, p: Tensor, old_lp: Tensor, lp: Tensor, adv: Tensor, low: float, high: float
) -> Tensor:
    return torch.where(adv > 0, (p - old_p) <= high, (p - old_p) >= -low)


def _keep_kl(
    old_p: Tensor, p: Tensor, old_lp: Tensor, lp: Tensor, adv: Tensor, low: float, high: float
) -> Tensor:
    divergence = binary_kl(old_p, p, old_lp, lp)
    return torch.where(adv > 0, (divergence <= high) | (p <= old_p), (divergence <= low) | (p >= old_p))


def compute_policy_loss_dppo_tv(
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str = "token-mean",
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
    **mode_specific: Any,
) -> tuple[Tensor, Metrics]:
    """DPPO-Binary-TV (https://arxiv.org/abs/2602.04879): mask tokens whose ``p - p_old`` leaves the threshold.

    ``keep = (p - p_old <= high)`` where ``A > 0``, ``(p - p_old >= -low)`` elsewhere;
    ``L = -A sg(min(rho, c)) logp keep`` (see the module docstring).

    Shape:
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights: (B, L).
    """
    return _dppo_loss(
        _keep_tv,
        old_log_prob,
        log_prob,
        advantages,
        response_mask,
        loss_agg_mode,
        clip_ratio_low,
        clip_ratio_high,
        clip_ratio_c,
        rollout_is_weights,
        mode_specific,
    )


def compute_policy_loss_dppo_kl(
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str = "token-mean",
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
    **mode_specific: Any,
) -> tuple[Tensor, Metrics]:
    """DPPO-Binary-KL (https://arxiv.org/abs/2602.04879): mask tokens whose binary KL leaves the threshold.

    ``keep = (KL_b <= high or p <= p_old)`` where ``A > 0``, ``(KL_b <= low or p >= p_old)`` elsewhere;
    ``L = -A sg(min(rho, c)) logp keep`` (see the module docstring).

    Shape:
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights: (B, L).
    """
    return _dppo_loss(
        _keep_kl,
        old_log_prob,
        log_prob,
        advantages,
        response_mask,
        loss_agg_mode,
        clip_ratio_low,
        clip_ratio_high,
        clip_ratio_c,
        rollout_is_weights,
        mode_specific,
    )
