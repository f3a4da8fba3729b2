"""Rollout correction: importance sampling and rejection between rollout and trainer log-probs.

Shapes (legend in :mod:`rlkit.algos._masked`): ``B`` responses, ``L`` response length.

The rollout engine (bf16 vLLM/SGLang, or a stale policy) and the trainer (FSDP, float32) do not
assign the same probabilities to the same tokens. verl's ``algorithm.rollout_correction`` corrects
the policy gradient for that gap, following "When Speed Kills Stability: Demystifying RL Collapse
from the Training-Inference Mismatch" (https://richardli.xyz/rl-collapse) and
https://fengyao.notion.site/off-policy-rl:

- **TIS** (truncated IS, ``rollout_is``): weights ``w = pi_train / pi_rollout`` per token (``token``) or
  per sequence (``sequence``, the product over tokens), truncated at ``rollout_is_threshold`` and
  detached; the policy loss multiplies its per-token loss by them.
- **IcePop** (``rollout_is_threshold_lower`` set, or verl's ``"lower_upper"`` threshold string): weights
  outside ``[lower, upper]`` become 0 instead of being truncated, so tokens whose training and
  inference probabilities disagree too much get no gradient at all (Ling team, "Small Leak Can Sink a
  Great Ship: Boost RL Training on MoE with IcePop", https://ringtech.notion.site/icepop).
- **MIS** (masked IS / rejection, ``rollout_rs``): tokens (``token``) or whole sequences
  (``sequence``: product of ratios; ``geometric``: geometric mean) whose ratio leaves
  ``[lower, upper]`` are removed from the response mask.
- **Veto** (``rollout_token_veto_threshold``): a sequence with any token ratio below the threshold is
  removed entirely.

All exponentials are taken of log-ratios clamped to ``[-20, 20]``. Metrics carry verl's names with the
``rollout_corr/`` prefix and are 0-dim float32 tensors (no host sync; call ``.item()`` to log).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlkit.algos._masked import masked_max, masked_mean, masked_min, masked_sum

__all__ = [
    "ROLLOUT_IS_LEVELS",
    "ROLLOUT_RS_LEVELS",
    "compute_offpolicy_metrics",
    "compute_rollout_correction_and_rejection_mask",
    "compute_rollout_correction_weights",
    "compute_rollout_rejection_mask",
    "parse_rollout_is_threshold",
]

SAFETY_BOUND = 20.0
ROLLOUT_IS_LEVELS: tuple[str, ...] = ("token", "sequence")
ROLLOUT_RS_LEVELS: tuple[str, ...] = ("token", "sequence", "geometric")

Metrics = dict[str, Tensor]


def _aggregate_log_ratio(log_ratio: Tensor, mask: Tensor, level: str) -> Tensor:
    """Log-ratio at the requested level, broadcast to (B, L): per token, summed or averaged per sequence."""
    if level == "token":
        return torch.where(mask > 0, log_ratio, torch.zeros_like(log_ratio))
    if level == "sequence":
        return masked_sum(log_ratio, mask, dim=-1).unsqueeze(-1).expand_as(log_ratio)
    if level == "geometric":
        return masked_mean(log_ratio, mask, dim=-1).unsqueeze(-1).expand_as(log_ratio)
    raise ValueError(f"unknown aggregation level {level!r}")


def _weight_stats(
    prefix: str, weights: Tensor, log_w: Tensor, mask: Tensor, bounds: tuple[float, float], per_sequence: bool
) -> Metrics:
    """Mean/max/min/std, effective sample size and threshold fractions of (untruncated) ratios.

    Threshold fractions count tokens for token-level ratios and sequences for sequence-level ones.
    """
    lower, upper = bounds
    valid_rows = (mask.sum(-1) > 0).float()
    unit_log_w, unit_mask = (log_w[:, :1], valid_rows[:, None]) if per_sequence else (log_w, mask)
    clamped = weights.clamp(min=lower, max=upper)
    mean_clamped = masked_mean(clamped, mask)
    variance = (masked_mean(clamped.square(), mask) - mean_clamped.square()).clamp(min=0.0)
    normalised = clamped / (mean_clamped + 1e-8)
    seq_mean = masked_mean(weights, mask, dim=-1)
    return {
        f"{prefix}_mean": masked_mean(weights, mask),
        f"{prefix}_max": masked_max(weights, mask),
        f"{prefix}_min": masked_min(torch.exp(log_w.clamp(max=SAFETY_BOUND)), mask),
        f"{prefix}_std": variance.sqrt(),
        f"{prefix}_eff_sample_size": 1.0 / masked_mean(normalised.square(), mask).clamp(min=1e-8),
        f"{prefix}_ratio_fraction_high": masked_mean((unit_log_w > math.log(upper)).float(), unit_mask),
        f"{prefix}_ratio_fraction_low": masked_mean((unit_log_w < math.log(lower)).float(), unit_mask),
        f"{prefix}_seq_mean": masked_mean(seq_mean, valid_rows),
        f"{prefix}_seq_max": masked_max(seq_mean, valid_rows),
        f"{prefix}_seq_min": masked_min(seq_mean, valid_rows),
    }


def parse_rollout_is_threshold(
    threshold: float | str, lower: float | None = None
) -> tuple[float, float | None]:
    """``(upper, lower)`` from a number or verl's ``"lower_upper"`` string (e.g. ``"0.5_5.0"``: IcePop).

    Raises:
        ValueError: an unparsable string, a non-positive bound, ``lower > upper``, or a lower bound given
            both in the string and as ``lower``.
    """
    if isinstance(threshold, str):
        parts = threshold.strip().split("_")
        try:
            numbers = [float(part) for part in parts]
        except ValueError:
            raise ValueError(
                f"invalid rollout_is_threshold {threshold!r}: want a number or 'lower_upper'"
            ) from None
        if len(numbers) == 2:
            if lower is not None:
                raise ValueError("rollout_is_threshold gives a lower bound; do not also pass one")
            lower, upper = numbers
        elif len(numbers) == 1:
            upper = numbers[0]
        else:
            raise ValueError(f"invalid rollout_is_threshold {threshold!r}: want a number or 'lower_upper'")
    else:
        upper = float(threshold)
    if upper <= 0 or (lower is not None and lower <= 0):
        raise ValueError(f"rollout_is_threshold bounds must be positive, got {threshold} (lower {lower})")
    if lower is not None and lower > upper:
        raise ValueError(f"rollout_is_threshold lower bound {lower} exceeds the upper bound {upper}")
    return upper, lower


@torch.no_grad()
def compute_rollout_correction_weights(
    log_ratio: Tensor,
    response_mask: Tensor,
    rollout_is: str = "token",
    rollout_is_threshold: float | str = 2.0,
    rollout_is_batch_normalize: bool = False,
    rollout_is_threshold_lower: float | None = None,
) -> tuple[Tensor, Metrics]:
    """Truncated importance-sampling weights ``min(pi_train / pi_rollout, threshold)`` (TIS), or IcePop.

    With a lower bound (``rollout_is_threshold_lower``, or ``rollout_is_threshold="lower_upper"`` as in
    verl) the weights are IcePop's: ``w`` where ``lower <= w <= upper``, else 0, and the metric
    ``rollout_is_oob_ratio`` is the fraction of valid tokens outside the bounds.

    Args:
        log_ratio: ``log pi_train - log pi_rollout`` per token.
        response_mask: 0/1 response mask.
        rollout_is: ``token`` (one weight per token) or ``sequence`` (the product over the sequence).
        rollout_is_threshold: Upper truncation (and, inverted, the lower bound used by the metrics), or
            verl's ``"lower_upper"`` string.
        rollout_is_batch_normalize: Rescale the weights to mean 1 over this batch (tokens or
            sequences). The mean is local: across workers the caller must all-reduce it.
        rollout_is_threshold_lower: IcePop's lower bound; None: TIS.

    Returns:
        ``(weights, metrics)``: detached float32 weights, zero outside the mask; metrics prefixed
        ``rollout_is_`` (without the ``rollout_corr/`` prefix), computed before truncation.

    Shape:
        log_ratio, response_mask: (B, L).
        weights: (B, L).
    """
    if rollout_is not in ROLLOUT_IS_LEVELS:
        raise ValueError(f"unknown rollout_is {rollout_is!r}; valid: {', '.join(ROLLOUT_IS_LEVELS)}")
    upper, lower = parse_rollout_is_threshold(rollout_is_threshold, rollout_is_threshold_lower)
    mask = response_mask.float()
    log_w = _aggregate_log_ratio(log_ratio.float(), mask, rollout_is)
    weights = torch.exp(log_w.clamp(-SAFETY_BOUND, SAFETY_BOUND)) * mask
    bounds = (1.0 / upper if lower is None else lower, upper)
    metrics = _weight_stats("rollout_is", weights, log_w, mask, bounds, per_sequence=rollout_is != "token")
    if lower is None:
        weights = weights.clamp(max=upper)
    else:
        outside = (weights < lower) | (weights > upper)
        weights = torch.where(outside, torch.zeros_like(weights), weights)
        metrics["rollout_is_oob_ratio"] = masked_mean(outside.float(), mask)
    if rollout_is_batch_normalize:
        if rollout_is == "token":
            batch_mean = masked_mean(weights, mask)
        else:
            batch_mean = masked_mean(masked_mean(weights, mask, dim=-1), (mask.sum(-1) > 0).float())
        factor = torch.where(batch_mean > 1e-8, batch_mean, torch.ones_like(batch_mean))
        weights = weights / factor
        metrics["rollout_is_batch_norm_factor"] = factor
    return weights, metrics


@torch.no_grad()
def compute_rollout_rejection_mask(
    log_ratio: Tensor,
    response_mask: Tensor,
    rollout_rs: str = "token",
    rollout_rs_threshold: float = 2.0,
    rollout_rs_threshold_lower: float | None = None,
) -> tuple[Tensor, Metrics]:
    """Masked importance sampling: drop tokens or sequences whose ratio leaves ``[lower, upper]``.

    Args:
        log_ratio: ``log pi_train - log pi_rollout`` per token.
        response_mask: 0/1 response mask.
        rollout_rs: ``token``, ``sequence`` (product of ratios) or ``geometric`` (geometric mean).
        rollout_rs_threshold: Upper bound on the ratio.
        rollout_rs_threshold_lower: Lower bound; ``1 / upper`` when None.

    Returns:
        ``(modified_mask, metrics)``: the mask with rejected positions zeroed (float32), and metrics
        prefixed ``rollout_rs_``.

    Shape:
        log_ratio, response_mask: (B, L).
        modified_mask: (B, L).
    """
    if rollout_rs not in ROLLOUT_RS_LEVELS:
        raise ValueError(f"unknown rollout_rs {rollout_rs!r}; valid: {', '.join(ROLLOUT_RS_LEVELS)}")
    upper = rollout_rs_threshold
    lower = rollout_rs_threshold_lower if rollout_rs_threshold_lower is not None else 1.0 / upper
    mask = response_mask.float()
    log_w = _aggregate_log_ratio(log_ratio.float(), mask, rollout_rs)
    weights = torch.exp(log_w.clamp(-SAFETY_BOUND, SAFETY_BOUND))
    # Thresholds are checked in log space so that ratios beyond exp(20) still count as outliers.
    keep = ((log_w >= math.log(lower)) & (log_w <= math.log(upper))).float()
    metrics = _weight_stats(
        "rollout_rs", weights, log_w, mask, (lower, upper), per_sequence=rollout_rs != "token"
    )
    rejected = (1.0 - keep) * mask
    metrics["rollout_rs_masked_fraction"] = masked_mean(rejected, mask)
    valid_rows = (mask.sum(-1) > 0).float()
    metrics["rollout_rs_seq_masked_fraction"] = masked_mean((rejected.sum(-1) > 0).float(), valid_rows)
    return mask * keep, metrics


@torch.no_grad()
def compute_offpolicy_metrics(
    old_log_prob: Tensor, rollout_log_prob: Tensor, response_mask: Tensor
) -> Metrics:
    """The trainer-vs-rollout log-prob gap: KL estimates, perplexities, chi-square, mean |diff|.

    ``kl`` is the k1 estimate of KL(pi_rollout || pi_train) (``mean(rollout - train)``), ``k3_kl`` the k3
    estimate ``mean(r - log r - 1)`` with ``r = pi_train / pi_rollout``; ``log_prob_abs_diff_mean``/``_max``
    (rlkit additions) are the mean and max of ``|train - rollout|`` over valid tokens. Sequence-level
    means (perplexities) are over responses with at least one valid token. Perplexities saturate at
    ``exp(20)`` so that a metric is never ``inf``; the ``*_log_ppl`` metrics are exact.

    Shape:
        old_log_prob, rollout_log_prob, response_mask: (B, L).
    """
    mask = response_mask.float()
    train, rollout = old_log_prob.float(), rollout_log_prob.float()
    log_ratio = torch.where(mask > 0, train - rollout, torch.zeros_like(train))
    valid_rows = (mask.sum(-1) > 0).float()
    train_mean = masked_mean(train, mask, dim=-1)
    rollout_mean = masked_mean(rollout, mask, dim=-1)
    log_ppl_diff = rollout_mean - train_mean
    safe_ratio = log_ratio.clamp(-SAFETY_BOUND, SAFETY_BOUND)
    seq_log_ratio = masked_sum(log_ratio, mask, dim=-1).clamp(-SAFETY_BOUND, SAFETY_BOUND)
    return {
        "training_ppl": masked_mean(torch.exp((-train_mean).clamp(max=SAFETY_BOUND)), valid_rows),
        "training_log_ppl": masked_mean(-train_mean, valid_rows),
        "rollout_ppl": masked_mean(torch.exp((-rollout_mean).clamp(max=SAFETY_BOUND)), valid_rows),
        "rollout_log_ppl": masked_mean(-rollout_mean, valid_rows),
        "kl": masked_mean(-log_ratio, mask),
        "k3_kl": masked_mean(torch.exp(safe_ratio) - safe_ratio - 1.0, mask),
        "log_ppl_diff": masked_mean(log_ppl_diff, valid_rows),
        "log_ppl_abs_diff": masked_mean(log_ppl_diff.abs(), valid_rows),
        "log_ppl_diff_max": masked_max(log_ppl_diff, valid_rows),
        "log_ppl_diff_min": masked_min(log_ppl_diff, valid_rows),
        "ppl_ratio": masked_mean(torch.exp(log_ppl_diff.clamp(-SAFETY_BOUND, SAFETY_BOUND)), valid_rows),
        "chi2_token": masked_mean(torch.exp(2.0 * safe_ratio), mask) - 1.0,
        "chi2_seq": masked_mean(torch.exp(2.0 * seq_log_ratio), valid_rows) - 1.0,
        "log_prob_abs_diff_mean": masked_mean(log_ratio.abs(), mask),
        "log_prob_abs_diff_max": masked_max(log_ratio.abs(), mask),
    }


def _apply_veto(
    log_ratio: Tensor, mask: Tensor, modified: Tensor, threshold: float | None
) -> tuple[Tensor, Metrics]:
    """Zero whole sequences that hold a token with ratio below ``threshold`` (no-op when None)."""
    zero = torch.zeros((), device=mask.device)
    if threshold is None:
        return modified, {"rollout_is_veto_fraction": zero, "rollout_is_catastrophic_token_fraction": zero}
    if threshold <= 0:
        raise ValueError(f"rollout_token_veto_threshold must be positive, got {threshold}")
    catastrophic = (log_ratio < math.log(threshold)) & (mask > 0)
    vetoed_rows = catastrophic.any(dim=-1, keepdim=True)
    return modified * (~vetoed_rows).float(), {
        "rollout_is_veto_fraction": vetoed_rows.float().mean(),
        "rollout_is_catastrophic_token_fraction": masked_mean(catastrophic.float(), mask),
    }


@torch.no_grad()
def compute_rollout_correction_and_rejection_mask(
    old_log_prob: Tensor,
    rollout_log_prob: Tensor,
    response_mask: Tensor,
    rollout_is: str | None = None,
    rollout_is_threshold: float | str = 2.0,
    rollout_rs: str | None = None,
    rollout_rs_threshold: float = 2.0,
    rollout_rs_threshold_lower: float | None = None,
    rollout_token_veto_threshold: float | None = None,
    rollout_is_batch_normalize: bool = False,
    rollout_is_threshold_lower: float | None = None,
) -> tuple[Tensor | None, Tensor, Metrics]:
    """IS weights, rejection mask and mismatch metrics in one call (verl's helper of the same name).

    Args:
        old_log_prob: Log-probs of the rollout under the trainer (``pi_train``).
        rollout_log_prob: Log-probs reported by the rollout engine (``pi_rollout``).
        response_mask: 0/1 response mask.
        rollout_is: ``token``/``sequence`` TIS weights, or None for none.
        rollout_is_threshold: TIS truncation, or verl's ``"lower_upper"`` string for IcePop.
        rollout_rs: ``token``/``sequence``/``geometric`` rejection, or None for none.
        rollout_rs_threshold: Upper ratio bound of the rejection.
        rollout_rs_threshold_lower: Lower ratio bound (``1 / upper`` when None).
        rollout_token_veto_threshold: Reject whole sequences with a token ratio below this; None: off.
        rollout_is_batch_normalize: Rescale IS weights to mean 1 over the batch.
        rollout_is_threshold_lower: IcePop's lower bound (weights outside the bounds become 0).

    Returns:
        ``(is_weights or None, modified_response_mask, metrics)``: detached float32 weights (zero
        outside the mask), the float32 mask after rejection and veto, and metrics named
        ``rollout_corr/<verl name>``.

    Shape:
        old_log_prob, rollout_log_prob, response_mask: (B, L).
        is_weights, modified_response_mask: (B, L).
    """
    if old_log_prob.shape != rollout_log_prob.shape or old_log_prob.shape != response_mask.shape:
        raise ValueError(
            f"shape mismatch: old_log_prob {tuple(old_log_prob.shape)}, rollout_log_prob "
            f"{tuple(rollout_log_prob.shape)}, response_mask {tuple(response_mask.shape)}"
        )
    mask = response_mask.float()
    log_ratio = torch.where(mask > 0, old_log_prob.float() - rollout_log_prob.float(), torch.zeros_like(mask))
    metrics: Metrics = {}
    weights = None
    if rollout_is is not None:
        weights, is_metrics = compute_rollout_correction_weights(
            log_ratio,
            mask,
            rollout_is,
            rollout_is_threshold,
            rollout_is_batch_normalize,
            rollout_is_threshold_lower,
        )
        metrics.update(is_metrics)
    modified = mask.clone()
    if rollout_rs is not None:
        modified, rs_metrics = compute_rollout_rejection_mask(
            log_ratio, mask, rollout_rs, rollout_rs_threshold, rollout_rs_threshold_lower
        )
        metrics.update(rs_metrics)
    modified, veto_metrics = _apply_veto(log_ratio, mask, modified, rollout_token_veto_threshold)
    metrics.update(veto_metrics)
    metrics.update(compute_offpolicy_metrics(old_log_prob, rollout_log_prob, mask))
    return weights, modified, {f"rollout_corr/{key}": value for key, value in metrics.items()}
