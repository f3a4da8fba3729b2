"""Inputs that some algorithms need beyond the common ones, read from config (never from a recipe name).

- :func:`apply_rollout_correction`: ``algo.rollout_correction`` (TIS or IcePop) turns the trainer's and
  the rollout engine's log-probs into ``rollout_is_weights``, which the actor's policy loss multiplies in.
- :func:`apply_distillation`: ``algo.distill`` weighs the task advantages and, in the policy-gradient
  form, adds the per-token reverse-KL advantage against the teacher (the GKD forms are actor losses).
- :func:`old_log_probs_source`: where the PPO ratio's denominators come from (``actor.old_log_probs``
  with ``auto`` resolved).
- :func:`estimator_extras`: GDPO's reward components (``algo.gdpo_reward_keys``, the keys of the dicts
  ``compute_score`` returned, stored as batch columns when the batch was scored), and the columns an
  estimator declares in :data:`rlkit.algos.ESTIMATOR_INPUTS` (OTB's ``sum_pi_squared``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rlkit.algos import (
    ESTIMATOR_INPUTS,
    compute_distill_reverse_kl_advantage,
    compute_rollout_correction_and_rejection_mask,
    masked_mean,
)
from rlkit.config.schema import RlkitConfig
from rlkit.data.batch import Batch
from rlkit.errors import UserError


def apply_rollout_correction(cfg: RlkitConfig, batch: Batch) -> dict[str, float]:
    """Set ``rollout_is_weights`` from ``old_log_probs`` and ``rollout_log_probs``; their metrics.

    A no-op (no metrics) when :func:`rollout_is_level` is ``none``.
    """
    rc = cfg.algo.rollout_correction
    level = rollout_is_level(cfg)
    if level == "none":
        return {}
    weights, _, metrics = compute_rollout_correction_and_rejection_mask(
        batch["old_log_probs"],
        batch["rollout_log_probs"],
        batch["response_mask"],
        rollout_is=level,
        rollout_is_threshold=rc.rollout_is_threshold,
        rollout_is_threshold_lower=rc.rollout_is_threshold_lower,
    )
    assert weights is not None
    batch.set("rollout_is_weights", weights)
    return {key: float(value) for key, value in metrics.items()}


def rollout_is_level(cfg: RlkitConfig) -> str:
    """``algo.rollout_correction.rollout_is`` with ``auto`` resolved: ``token`` where the rollouts come
    from older weights than the recomputed old log-probs (``trainer.mode`` one_step_off or async),
    else ``none`` (bypass mode's ratio already divides by the rollout's log-probs)."""
    level = cfg.algo.rollout_correction.rollout_is
    if level != "auto":
        return level
    off_policy = cfg.trainer.mode != "sync" and cfg.actor.old_log_probs != "rollout"
    return "token" if off_policy else "none"


def estimator_extras(cfg: RlkitConfig, batch: Batch) -> dict[str, Any]:
    """Keywords for the advantage estimator beyond the common set (empty when none apply).

    Raises:
        UserError: A key of ``algo.gdpo_reward_keys`` that the reward function did not return.
    """
    extras: dict[str, Any] = {name: batch[name] for name in ESTIMATOR_INPUTS.get(cfg.algo.advantage, ())}
    if extras and "rollout_is_weights" in batch:
        extras["rollout_is_weights"] = batch["rollout_is_weights"]  # OTB scales its variances by rho^2
    keys = list(cfg.algo.gdpo_reward_keys)
    if not keys:
        return extras
    components = {}
    for key in keys:
        if key not in batch:
            raise UserError(
                f"algo.gdpo_reward_keys: the reward function returned no {key!r} for this batch",
                hint="return a dict with 'score' and each GDPO key from compute_score",
            )
        values = [np.nan if v is None else float(v) for v in batch[key]]
        components[key] = torch.tensor(values, dtype=torch.float32).nan_to_num(0.0)
    weights = cfg.algo.gdpo_reward_weights
    extras["reward_components"] = components
    extras["reward_weights"] = None if weights is None else list(weights)
    return extras


def old_log_probs_source(cfg: RlkitConfig, hooks_read_them: bool = False) -> str:
    """``actor.old_log_probs`` with ``auto`` resolved: ``recompute``, ``rollout`` or ``update``.

    ``auto`` is ``update`` when the update is one on-policy pass (``trainer.mode=sync``, one
    mini-batch, one epoch) and nothing before it reads the old log-probs (rollout-correction
    weights, an estimator such as OTB, distillation, a KL penalty in the reward, or a recipe's
    hooks: ``hooks_read_them``); else ``recompute``. With ``update`` the update's own forward pass is
    the ratio's denominator, detached (the ratio is exactly 1, as in verl's on-policy branch and in
    TRL with one iteration), and its log-probs are the batch's ``old_log_probs`` afterwards: the
    separate forward pass over the batch is skipped and the step computes the same update.
    """
    chosen = cfg.actor.old_log_probs
    if chosen != "auto":
        return chosen
    one_pass = cfg.trainer.mode == "sync" and cfg.data.batch_size == cfg.actor.mini_batch_size
    one_pass = one_pass and cfg.actor.epochs == 1
    estimator_reads = {"old_log_probs", "sum_pi_squared"} & set(ESTIMATOR_INPUTS.get(cfg.algo.advantage, ()))
    read_before = (
        hooks_read_them
        or rollout_is_level(cfg) != "none"
        or bool(estimator_reads)
        or bool(cfg.algo.distill.teachers)
        or cfg.algo.use_kl_in_reward
    )
    return "update" if one_pass and not read_before else "recompute"


def needs_sum_pi_squared(cfg: RlkitConfig) -> bool:
    """Whether the advantage estimator needs ``sum_pi_squared`` from the old-log-prob pass (OTB)."""
    return "sum_pi_squared" in ESTIMATOR_INPUTS.get(cfg.algo.advantage, ())


def apply_distillation(cfg: RlkitConfig, batch: Batch) -> dict[str, float]:
    """``advantages <- task_coef * advantages (+ coef * (log pi_teacher - log pi_student)))``; metrics.

    A no-op without ``algo.distill.teachers``. The student's log-probs are the batch's ``old_log_probs``
    (the policy that sampled, as the trainer computes them).
    """
    d = cfg.algo.distill
    if not d.teachers:
        return {}
    mask = batch["response_mask"]
    gap = compute_distill_reverse_kl_advantage(batch["old_log_probs"], batch["teacher_log_prob"], mask)
    advantages = batch["advantages"] * d.task_coef
    if d.loss == "pg_reverse_kl":
        bounded = compute_distill_reverse_kl_advantage(
            batch["old_log_probs"], batch["teacher_log_prob"], mask, clip=d.advantage_clip
        )
        advantages = advantages + d.coef * bounded
    batch.set("advantages", advantages)
    # the sampled-token estimate of KL(student || teacher), whatever the loss: the distillation curve
    return {"distill/reverse_kl": float(masked_mean(-gap, mask))}
