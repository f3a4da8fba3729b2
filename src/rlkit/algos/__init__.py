"""RL math as small pure functions: advantages, policy and value losses, KL, aggregation, entropy.

A leaf package: it imports torch, numpy and :mod:`rlkit.errors` only. Names and semantics follow verl
(``verl/trainer/ppo/core_algos.py``, ``rollout_corr_helper.py``, ``recipe/spin``, ``recipe/sppo``);
deviations are listed in ``docs/algorithms.md``. Registries are literal dicts:

- :data:`advantage_estimators`: ``algo.advantage`` name -> ``fn(**keywords) -> (advantages, returns)``.
- :data:`policy_losses`: ``loss_mode`` name -> ``fn(old_log_prob, log_prob, advantages, response_mask, ...)``.
"""

from __future__ import annotations

from rlkit.algos._groups import GroupIndex, group_ids
from rlkit.algos._masked import masked_mean, masked_sum, masked_var, masked_whiten
from rlkit.algos.advantages import (
    ESTIMATOR_INPUTS,
    AdvantageFn,
    advantage_estimators,
    compute_gae_advantage_return,
    compute_gdpo_outcome_advantage,
    compute_gpg_outcome_advantage,
    compute_grpo_outcome_advantage,
    compute_grpo_passk_outcome_advantage,
    compute_opo_outcome_advantage,
    compute_reinforce_plus_plus_baseline_outcome_advantage,
    compute_reinforce_plus_plus_outcome_advantage,
    compute_remax_outcome_advantage,
    compute_rloo_outcome_advantage,
)
from rlkit.algos.aggregation import AGG_KWARGS, LOSS_AGG_MODES, agg_loss
from rlkit.algos.distill import (
    GKD_LOSSES,
    compute_distill_reverse_kl_advantage,
    compute_gkd_loss,
    gkd_divergence,
)
from rlkit.algos.entropy import compute_entropy_loss, entropy_from_logits
from rlkit.algos.kl import (
    KL_PENALTIES,
    AdaptiveKLController,
    FixedKLController,
    KLController,
    apply_kl_penalty,
    kl_penalty,
    make_kl_controller,
)
from rlkit.algos.policy_losses import (
    PolicyLossFn,
    compute_policy_loss_cispo,
    compute_policy_loss_clip_cov,
    compute_policy_loss_dppo_kl,
    compute_policy_loss_dppo_tv,
    compute_policy_loss_geo_mean,
    compute_policy_loss_gpg,
    compute_policy_loss_gspo,
    compute_policy_loss_kl_cov,
    compute_policy_loss_reinforce,
    compute_policy_loss_sapo,
    compute_policy_loss_sppo,
    compute_policy_loss_vanilla,
    policy_losses,
)
from rlkit.algos.preference import (
    compute_online_dpo_loss,
    compute_online_dpo_weights,
    compute_onlinedpo_pref,
    compute_sppo_loss,
    compute_sppo_outcome_advantage,
    sppo_advantages,
)
from rlkit.algos.rollout_correction import (
    ROLLOUT_IS_LEVELS,
    ROLLOUT_RS_LEVELS,
    compute_offpolicy_metrics,
    compute_rollout_correction_and_rejection_mask,
    compute_rollout_correction_weights,
    compute_rollout_rejection_mask,
)
from rlkit.algos.token_baseline import compute_optimal_token_baseline_advantage
from rlkit.algos.value import compute_value_loss

__all__ = [
    "AGG_KWARGS",
    "ESTIMATOR_INPUTS",
    "GKD_LOSSES",
    "KL_PENALTIES",
    "LOSS_AGG_MODES",
    "ROLLOUT_IS_LEVELS",
    "ROLLOUT_RS_LEVELS",
    "AdaptiveKLController",
    "AdvantageFn",
    "FixedKLController",
    "GroupIndex",
    "KLController",
    "PolicyLossFn",
    "advantage_estimators",
    "agg_loss",
    "apply_kl_penalty",
    "compute_distill_reverse_kl_advantage",
    "compute_entropy_loss",
    "compute_gkd_loss",
    "compute_gae_advantage_return",
    "compute_gdpo_outcome_advantage",
    "compute_gpg_outcome_advantage",
    "compute_grpo_outcome_advantage",
    "compute_grpo_passk_outcome_advantage",
    "compute_offpolicy_metrics",
    "compute_online_dpo_loss",
    "compute_online_dpo_weights",
    "compute_onlinedpo_pref",
    "compute_opo_outcome_advantage",
    "compute_optimal_token_baseline_advantage",
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
    "compute_reinforce_plus_plus_baseline_outcome_advantage",
    "compute_reinforce_plus_plus_outcome_advantage",
    "compute_remax_outcome_advantage",
    "compute_rloo_outcome_advantage",
    "compute_rollout_correction_and_rejection_mask",
    "compute_rollout_correction_weights",
    "compute_rollout_rejection_mask",
    "compute_sppo_loss",
    "compute_sppo_outcome_advantage",
    "compute_value_loss",
    "entropy_from_logits",
    "gkd_divergence",
    "group_ids",
    "kl_penalty",
    "make_kl_controller",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_losses",
    "sppo_advantages",
]
