"""Policy-gradient losses (verl's ``actor.policy_loss.loss_mode``).

Shapes (legend in :mod:`rlkit.algos._masked`): ``B`` responses, ``L`` response length. Every loss takes

    fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
       clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0, rollout_is_weights=None,
       **mode_specific) -> (loss, metrics)

with all tensors ``(B, L)``. ``mode_specific`` carries the global-batch arguments of
:func:`rlkit.algos.agg_loss` (``dp_size``, ``batch_num_tokens``, ``global_batch_size``,
``loss_scale_factor``), forwarded to it, and the parameters of individual modes (``tau_pos``,
``clip_cov_ratio``, ...); keywords a mode does not use are ignored, so the trainer can pass one set.

Conventions shared by all modes:

- ``delta = log_prob - old_log_prob`` is clamped to ``[-20, 20]`` before any ``exp`` (verl clamps in
  most modes; here in all of them), so extreme log-prob gaps give no ``inf``/``nan``.
- Positions outside ``response_mask`` are replaced by zeros before any arithmetic, so padding that
  holds ``-inf``/``nan`` affects neither the loss nor the gradient.
- ``rollout_is_weights`` (rollout correction, detached) multiply the per-token loss before aggregation.
- The loss is float32 and differentiable w.r.t. ``log_prob``; metrics are detached 0-dim float32
  tensors named as in verl (``actor/pg_clipfrac``, ``actor/ppo_kl``, ``actor/pg_clipfrac_lower``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rlkit.algos._masked import masked_mean, masked_sum, safe_denominator
from rlkit.algos.aggregation import agg_loss, pick_agg_kwargs
from rlkit.algos.dppo import compute_policy_loss_dppo_kl, compute_policy_loss_dppo_tv
from rlkit.algos.preference import compute_sppo_loss
from rlkit.algos.rollout_correction import compute_rollout_correction_and_rejection_mask

__all__ = [
    "PolicyLossFn",
    "compute_policy_loss_cispo",
    "compute_policy_loss_clip_cov",
    "compute_policy_loss_dppo_kl",
    "compute_policy_loss_dppo_tv",
    "compute_policy_loss_geo_mean",
    "compute_policy_loss_gpg",
    "compute_policy_loss_gspo",
    "compute_policy_loss_kl_cov",
    "compute_policy_loss_reinforce",
    "compute_policy_loss_sapo",
    "compute_policy_loss_sppo",
    "compute_policy_loss_vanilla",
    "policy_losses",
]

PolicyLossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]
"""``fn(old_log_prob, log_prob, advantages, response_mask, ...) -> (loss, metrics)``."""

Metrics = dict[str, Tensor]
_LOG_RATIO_BOUND = 20.0


def _prepare(
    old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor, response_mask: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float32 ``(old, new, adv, mask)`` with every masked position set to 0 (the double-where trick)."""
    mask = response_mask.float()
    keep = mask > 0

    def clean(x: Tensor) -> Tensor:
        x = x.float()
        return torch.where(keep, x, torch.zeros_like(x))

    return clean(old_log_prob), clean(log_prob), clean(advantages), mask


def _log_ratio(old: Tensor, new: Tensor) -> Tensor:
    return torch.clamp(new - old, min=-_LOG_RATIO_BOUND, max=_LOG_RATIO_BOUND)


def _weighted(losses: Tensor, rollout_is_weights: Tensor | None) -> Tensor:
    return losses if rollout_is_weights is None else losses * rollout_is_weights.detach().float()


def _metrics(clipfrac: Tensor, ppo_kl: Tensor, clipfrac_lower: Tensor | None = None) -> Metrics:
    lower = torch.zeros_like(clipfrac) if clipfrac_lower is None else clipfrac_lower
    return {
        "actor/pg_clipfrac": clipfrac.detach(),
        "actor/ppo_kl": ppo_kl.detach(),
        "actor/pg_clipfrac_lower": lower.detach(),
    }


def compute_policy_loss_vanilla(
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
    """PPO clipped surrogate with clip-higher (asymmetric ranges) and dual-clip.

    Papers: PPO https://arxiv.org/abs/1707.06347; dual-clip https://arxiv.org/abs/1912.09729;
    clip-higher (DAPO) https://arxiv.org/abs/2503.14476.

    ``rho = exp(delta)``; ``L1 = -A rho``; ``L2 = -A clamp(rho, 1 - low, 1 + high)``; ``Lc = max(L1, L2)``;
    ``L3 = -A c``; ``L = min(L3, Lc)`` where ``A < 0``, else ``Lc``. Metrics: ``pg_clipfrac = mean(L2 > L1)``,
    ``ppo_kl = mean(-delta)``, ``pg_clipfrac_lower = mean(Lc > L3 and A < 0)``.

    Raises:
        ValueError: ``clip_ratio_c <= 1``.

    Shape:
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights: (B, L).
    """
    if clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c (dual-clip bound) must be > 1, got {clip_ratio_c}")
    old, new, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask)
    log_ratio = _log_ratio(old, new)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    clip_loss = torch.maximum(unclipped, clipped)
    dual_bound = -adv * clip_ratio_c
    losses = torch.where(adv < 0, torch.minimum(dual_bound, clip_loss), clip_loss)
    loss = agg_loss(
        _weighted(losses, rollout_is_weights), mask, loss_agg_mode, **pick_agg_kwargs(mode_specific)
    )
    clipfrac_lower = masked_mean(((clip_loss > dual_bound) & (adv < 0)).float(), mask)
    return loss, _metrics(
        masked_mean((clipped > unclipped).float(), mask), masked_mean(-log_ratio, mask), clipfrac_lower
    )


def compute_policy_loss_gspo(
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
    """GSPO: PPO clipping on the length-normalised sequence ratio.

    Paper: https://arxiv.org/abs/2507.18071.

    ``log s_i = sum_t delta m / |y_i|``; per token ``log s_it = logp - sg(logp) + sg(log s_i)`` (value
    ``s_i``, gradient of the token), clamped to at most 10; ``L = max(-A s, -A clamp(s, 1 - low, 1 + high))``.
    Always aggregated with ``seq-mean-token-mean``, whatever ``loss_agg_mode`` says (as in verl; the GSPO
    paper recommends clip ranges around 3e-4/4e-4). ``pg_clipfrac_lower`` is 0.

    Shape:
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights: (B, L).
    """
    old, new, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask)
    log_ratio = _log_ratio(old, new)
    seq_log_ratio = masked_sum(log_ratio, mask, dim=-1) / mask.sum(-1).clamp(min=1)
    token_log_ratio = torch.clamp(new - new.detach() + seq_log_ratio.detach().unsqueeze(-1), max=10.0)
    ratio = torch.exp(token_log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    losses = _weighted(torch.maximum(unclipped, clipped), rollout_is_weights)
    loss = agg_loss(losses, mask, "seq-mean-token-mean", **pick_agg_kwargs(mode_specific))
    return loss, _metrics(masked_mean((clipped > unclipped).float(), mask), masked_mean(-log_ratio, mask))


def compute_policy_loss_sapo(
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
    """SAPO: a smooth sigmoid gate on the ratio instead of a hard clip.

    Paper: https://arxiv.org/abs/2511.20347.

    ``f(rho, tau) = sigmoid(tau (rho - 1)) * 4 / tau`` with ``tau = tau_pos`` (default 1.0) where ``A > 0``
    and ``tau_neg`` (default 1.05) elsewhere; ``L = -f A``. Always ``seq-mean-token-mean`` (as in verl).
    Clip fractions are 0. Mode keywords: ``tau_pos``, ``tau_neg``.

    Shape:
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights: (B, L).
    """
    old, new, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask)
    log_ratio = _log_ratio(old, new)
    tau_pos = torch.full((), float(mode_specific.get("tau_pos", 1.0)), device=adv.device)
    tau_neg = torch.full((), float(mode_specific.get("tau_neg", 1.05)), device=adv.device)
    tau = torch.where(adv > 0, tau_pos, tau_neg)
    gate = torch.sigmoid(tau * (torch.exp(log_ratio) - 1.0)) * (4.0 / tau)
    losses = _weighted(-gate * adv, rollout_is_weights)
    loss = agg_loss(losses, mask, "seq-mean-token-mean", **pick_agg_kwargs(mode_specific))
    zero = torch.zeros((), device=loss.device)
    return loss, _metrics(zero, masked_mean(-log_ratio, mask))


def compute_policy_loss_gpg(
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
    """GPG: plain policy gradient ``L = -logp * A`` (no ratio, no clipping); no metrics (as in verl).

    Paper: https://arxiv.org/abs/2504.02546.

    Shape:
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights: (B, L).
    """
    _, new, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask)
    losses = _weighted(-new * adv, rollout_is_weights)
    return agg_loss(losses, mask, loss_agg_mode, **pick_agg_kwargs(mode_specific)), {}


def compute_policy_loss_clip_cov(
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
    """Clip-Cov: detach the gradient of a few random high-covariance tokens (entropy collapse control).

    Paper: "The Entropy Mechanism of RL for Reasoning LMs", https://arxiv.org/abs/2505.22617.

    ``cov = (A - mean A) (logp - mean logp)`` over valid tokens. Among tokens not already clipped by
    PPO with ``clip_cov_lb < cov < clip_cov_ub``, ``max(int(clip_cov_ratio * N), 1)`` are picked at random
    and get ``corr = 0``; ``L = max(L1, L2) * corr``. ``pg_clipfrac = mean(corr == 0)``. Mode keywords:
    ``clip_cov_ratio`` (2e-4), ``clip_cov_lb`` (1.0), ``clip_cov_ub`` (5.0), ``generator`` (a CPU
    ``torch.Generator`` for the random pick).

    Shape:
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights: (B, L).
    """
    ratio_k = float(mode_specific.get("clip_cov_ratio", 2e-4))
    lower_cov, upper_cov = (
        float(mode_specific.get("clip_cov_lb", 1.0)),
        float(mode_specific.get("clip_cov_ub", 5.0)),
    )
    old, new, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask)
    log_ratio = _log_ratio(old, new)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    with torch.no_grad():
        cov = (adv - masked_mean(adv, mask)) * (new - masked_mean(new, mask))
        candidates = (cov > lower_cov) & (cov < upper_cov) & (mask > 0) & ~(clipped > unclipped)
        flat = torch.nonzero(candidates.reshape(-1)).squeeze(-1)
        budget = max(int(ratio_k * float(mask.sum())), 1)
        perm = torch.randperm(flat.numel(), generator=mode_specific.get("generator")).to(flat.device)
        corr = torch.ones_like(adv).reshape(-1).index_fill_(0, flat[perm[:budget]], 0.0).reshape(adv.shape)
    losses = _weighted(torch.maximum(unclipped, clipped) * corr, rollout_is_weights)
    loss = agg_loss(losses, mask, loss_agg_mode, **pick_agg_kwargs(mode_specific))
    return loss, _metrics(masked_mean((corr == 0).float(), mask), masked_mean(-log_ratio, mask))


def compute_policy_loss_kl_cov(
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
    """KL-Cov: a KL penalty on the highest-covariance tokens only (entropy collapse control).

    Paper: https://arxiv.org/abs/2505.22617.

    ``L = -A rho`` everywhere, plus ``ppo_kl_coef * |delta|`` on the top ``max(1, int(N * kl_cov_ratio))``
    valid tokens by ``cov = (A - mean A)(logp - mean logp)``. ``actor/ppo_kl`` is ``mean |delta|`` and there are
    no clip fractions (as in verl). Mode keywords: ``kl_cov_ratio`` (2e-4), ``ppo_kl_coef`` (0.1, verl's
    config default).

    Shape:
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights: (B, L).
    """
    ratio_k = float(mode_specific.get("kl_cov_ratio", 2e-4))
    kl_coef = float(mode_specific.get("ppo_kl_coef", 0.1))
    old, new, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask)
    log_ratio = _log_ratio(old, new)
    losses = -adv * torch.exp(log_ratio)
    num_valid = int(mask.sum())
    if num_valid > 0:
        with torch.no_grad():
            cov = (adv - masked_mean(adv, mask)) * (new - masked_mean(new, mask))
            cov = torch.where(mask > 0, cov, torch.full_like(cov, float("-inf")))
            top = torch.topk(cov.reshape(-1), max(1, int(num_valid * ratio_k))).indices
            selected = torch.zeros_like(mask).reshape(-1).index_fill_(0, top, 1.0).reshape(mask.shape)
        losses = losses + selected * kl_coef * log_ratio.abs()
    loss = agg_loss(
        _weighted(losses, rollout_is_weights), mask, loss_agg_mode, **pick_agg_kwargs(mode_specific)
    )
    return loss, {"actor/ppo_kl": masked_mean(log_ratio.abs(), mask).detach()}


def compute_policy_loss_geo_mean(
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
    """GMPO: the geometric mean of token ratios, clipped per token in log space.

    Paper: https://arxiv.org/abs/2507.20673.

    ``delta_c = sgn(A) min(sgn(A) delta, sgn(A) clamp(delta, -low, high))``;
    ``rho_i = exp(sum_t delta_c m / sum_t m)``, ``A_i = sum_t A m / sum_t m``; sequence loss ``-A_i rho_i``,
    averaged over non-empty sequences (``loss_agg_mode`` is ignored, as in verl; ``global_batch_size`` and
    ``dp_size`` apply). IS weights enter as their per-sequence geometric mean.
    ``pg_clipfrac``/``pg_clipfrac_lower``: clipped tokens with ``A > 0`` / ``A < 0``.

    Shape:
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights: (B, L).
    """
    old, new, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask)
    log_ratio = _log_ratio(old, new)
    sign = torch.sign(adv)
    bounded = torch.clamp(log_ratio, -clip_ratio_low, clip_ratio_high)
    clipped_log_ratio = sign * torch.minimum(sign * log_ratio, sign * bounded)
    lengths = safe_denominator(mask.sum(-1))
    seq_ratio = torch.exp(masked_sum(clipped_log_ratio, mask, dim=-1) / lengths)
    seq_losses = -(masked_sum(adv, mask, dim=-1) / lengths) * seq_ratio
    if rollout_is_weights is not None:
        log_w = torch.log(rollout_is_weights.detach().float() + 1e-10)
        seq_losses = seq_losses * torch.exp(masked_sum(log_w, mask, dim=-1) / lengths)
    seq_valid = (mask.sum(-1) > 0).float().unsqueeze(-1)
    loss = agg_loss(
        seq_losses.unsqueeze(-1), seq_valid, "seq-mean-token-sum", **pick_agg_kwargs(mode_specific)
    )
    was_clipped = log_ratio != bounded
    clipfrac = masked_mean((was_clipped & (adv > 0)).float(), mask)
    return loss, _metrics(
        clipfrac, masked_mean(-log_ratio, mask), masked_mean((was_clipped & (adv < 0)).float(), mask)
    )


def compute_policy_loss_cispo(
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
    """CISPO: clip the importance weight, not the update; every token keeps a gradient.

    Paper: MiniMax-M1, https://arxiv.org/abs/2506.13585.

    ``L = -sg(clamp(rho, 1 - low, 1 + high)) * A * logp``; ``pg_clipfrac = mean(rho != clamp(rho))``, lower 0.
    (verl's example sets ``clip_ratio_low`` large, e.g. 10, i.e. no lower clip.)

    Shape:
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights: (B, L).
    """
    old, new, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask)
    log_ratio = _log_ratio(old, new)
    ratio = torch.exp(log_ratio).detach()
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    losses = _weighted(-clipped_ratio * adv * new, rollout_is_weights)
    loss = agg_loss(losses, mask, loss_agg_mode, **pick_agg_kwargs(mode_specific))
    return loss, _metrics(masked_mean((ratio != clipped_ratio).float(), mask), masked_mean(-log_ratio, mask))


_ROLLOUT_CORRECTION_KEYS = (
    "rollout_is",
    "rollout_is_threshold",
    "rollout_rs",
    "rollout_rs_threshold",
    "rollout_rs_threshold_lower",
    "rollout_token_veto_threshold",
    "rollout_is_batch_normalize",
    "rollout_is_threshold_lower",
)


def compute_policy_loss_reinforce(
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
    """REINFORCE with rollout importance sampling (verl's bypass mode, ``loss_type="reinforce"``).

    Paper: Williams 1992 (REINFORCE); IS correction per https://fengyao.notion.site/off-policy-rl.

    ``old_log_prob`` holds the *rollout* log-probs (bypass: no separate trainer forward). ``L = -A logp w``
    with ``w`` the given ``rollout_is_weights``; when those are None and any of ``rollout_is``,
    ``rollout_rs``, ``rollout_token_veto_threshold`` (and their thresholds) is in ``mode_specific``, the
    weights ``min(pi_current / pi_rollout, threshold)`` and the rejection mask are computed here (see
    :func:`rlkit.algos.compute_rollout_correction_and_rejection_mask`) and their ``rollout_corr/`` metrics
    returned. ``actor/ppo_kl = mean(old - logp)``; no clip fractions.

    Shape:
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights: (B, L).
    """
    old, new, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask)
    metrics: Metrics = {}
    correction = {
        key: mode_specific[key] for key in _ROLLOUT_CORRECTION_KEYS if mode_specific.get(key) is not None
    }
    if rollout_is_weights is None and {"rollout_is", "rollout_rs", "rollout_token_veto_threshold"} & set(
        correction
    ):
        rollout_is_weights, mask, metrics = compute_rollout_correction_and_rejection_mask(
            new.detach(), old, mask, **correction
        )
    losses = _weighted(-adv * new, rollout_is_weights)
    loss = agg_loss(losses, mask, loss_agg_mode, **pick_agg_kwargs(mode_specific))
    metrics["actor/ppo_kl"] = masked_mean(old - new, mask).detach()
    return loss, metrics


def compute_policy_loss_sppo(
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
    """SPPO: squared error between each response's log-ratio and its scaled target.

    Paper: https://arxiv.org/abs/2405.00675 (verl ``recipe/sppo``). ``advantages`` hold each response's
    target ``r_i`` on its valid tokens (``algo.advantage=sppo``: the soft-mean-centred score); the loss
    is ``(sum_t logp - sum_t old - eta r_i)^2`` averaged over non-empty responses
    (:func:`rlkit.algos.compute_sppo_loss`), with ``eta`` the ``sppo_eta`` keyword (default 1).
    ``loss_agg_mode`` and the clip ranges are ignored (the loss is per sequence, without a ratio).
    Metrics as verl: ``actor/log_ratio_mean``, ``actor/preference_mean`` (mean ``eta r``).

    Raises:
        ValueError: ``rollout_is_weights`` given (a per-token weight has no meaning for this loss).

    Shape:
        old_log_prob, log_prob, advantages, response_mask: (B, L).
    """
    if rollout_is_weights is not None:
        raise ValueError("the sppo loss does not take rollout_is_weights")
    old, new, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask)
    lengths = mask.sum(dim=-1)
    targets = masked_sum(adv, mask, dim=-1) / safe_denominator(lengths)
    agg = pick_agg_kwargs(mode_specific)
    loss, log_ratios, scaled = compute_sppo_loss(
        old,
        new,
        targets,
        mask,
        eta=float(mode_specific.get("sppo_eta", 1.0)),
        dp_size=int(agg.get("dp_size", 1)),
        global_batch_size=agg.get("global_batch_size"),
    )
    valid = (lengths > 0).float()
    return loss, {
        "actor/log_ratio_mean": masked_mean(log_ratios.detach(), valid),
        "actor/preference_mean": masked_mean(scaled.detach(), valid),
    }


policy_losses: dict[str, PolicyLossFn] = {
    "vanilla": compute_policy_loss_vanilla,
    "gspo": compute_policy_loss_gspo,
    "sapo": compute_policy_loss_sapo,
    "gpg": compute_policy_loss_gpg,
    "clip_cov": compute_policy_loss_clip_cov,
    "kl_cov": compute_policy_loss_kl_cov,
    "geo_mean": compute_policy_loss_geo_mean,
    "cispo": compute_policy_loss_cispo,
    "reinforce": compute_policy_loss_reinforce,
    "sppo": compute_policy_loss_sppo,
    "dppo_tv": compute_policy_loss_dppo_tv,
    "dppo_kl": compute_policy_loss_dppo_kl,
}
"""Policy losses by verl name (``actor.policy_loss.loss_mode``)."""
