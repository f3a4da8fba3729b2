"""KL estimators between policy and reference, KL-in-reward, and the KL coefficient controllers.

Shapes (legend in :mod:`rlkit.algos._masked`): ``B`` responses, ``L`` response length.

Estimators follow J. Schulman, "Approximating KL divergence" (http://joschu.net/blog/kl-approx.html);
with ``d = logprob - ref_logprob`` (log of ``pi / pi_ref`` at the sampled token):

- ``kl`` / ``k1``: ``d``. Unbiased for KL(pi || pi_ref), high variance, can be negative.
- ``abs``: ``|d|``.
- ``mse`` / ``k2``: ``d**2 / 2``. Biased value, but its gradient is the gradient of the KL.
- ``low_var_kl`` / ``k3``: ``exp(-d) + d - 1``, with ``-d`` clamped to ``[-20, 20]`` and the result to
  ``[-10, 10]`` (verl's bounds). Unbiased, non-negative, low variance.
- A ``+`` suffix (``k1+``, ``k3+``, ``low_var_kl+``, ...): the forward value of the named estimator
  with the gradient of ``k2`` (straight-through), because the expected gradients of ``k1``/``k3`` are
  not the gradient of the KL. verl at b178a3cd passes the unstripped name to its forward function, so
  ``k3+`` raises there; here it works.
- ``full``: needs the full vocabulary distributions; not implemented (as in verl).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlkit.algos._masked import masked_mean

__all__ = [
    "KL_PENALTIES",
    "AdaptiveKLController",
    "FixedKLController",
    "KLController",
    "apply_kl_penalty",
    "kl_penalty",
    "make_kl_controller",
]

KL_PENALTIES: tuple[str, ...] = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
"""Base estimator names; each also accepts a ``+`` suffix."""


def _kl_forward(diff: Tensor, name: str) -> Tensor:
    if name in ("kl", "k1"):
        return diff
    if name == "abs":
        return diff.abs()
    if name in ("mse", "k2"):
        return 0.5 * diff.square()
    if name in ("low_var_kl", "k3"):
        log_ratio = torch.clamp(-diff, min=-20.0, max=20.0)
        return torch.clamp(torch.exp(log_ratio) - log_ratio - 1.0, min=-10.0, max=10.0)
    if name == "full":
        raise NotImplementedError("kl_penalty='full' needs full-vocabulary log-probs; use k1/k2/k3")
    raise ValueError(f"unknown kl_penalty {name!r}; valid: {', '.join(KL_PENALTIES)} (each also with '+')")


def kl_penalty(logprob: Tensor, ref_logprob: Tensor, kl_penalty: str) -> Tensor:
    """Per-token KL estimate between the policy and the reference (see the module docstring).

    Args:
        logprob: Log-probs of the sampled tokens under the policy.
        ref_logprob: Log-probs of the same tokens under the reference policy.
        kl_penalty: Estimator name: ``kl``/``k1``, ``abs``, ``mse``/``k2``, ``low_var_kl``/``k3``, each
            optionally with a ``+`` suffix (k2 gradient, straight-through).

    Returns:
        Float32 per-token estimates (differentiable w.r.t. ``logprob``).

    Raises:
        ValueError: Unknown estimator name.
        NotImplementedError: ``full``.

    Shape:
        logprob: (B, L).
        ref_logprob: (B, L).
        return: (B, L).
    """
    return _kl_estimate(logprob, ref_logprob, kl_penalty)


def _kl_estimate(logprob: Tensor, ref_logprob: Tensor, name: str) -> Tensor:
    diff = logprob.float() - ref_logprob.float()
    base = name[:-1] if name.endswith("+") else name
    forward = _kl_forward(diff, base)
    if base == name or base in ("mse", "k2"):
        return forward
    # Straight-through: the value of the named estimator, the gradient of k2.
    k2 = 0.5 * diff.square()
    return k2 - k2.detach() + forward.detach()


class FixedKLController:
    """A constant KL coefficient (``algo.kl_ctrl.type=fixed``)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        """No-op: the coefficient stays fixed."""

    def state_dict(self) -> dict[str, float]:
        """The controller's state, for checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore :meth:`state_dict` output."""
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient that steers the measured KL towards ``target_kl``.

    Paper: Ziegler et al. 2019, https://arxiv.org/abs/1909.08593 (section 2.2).

    ``error = clip(current_kl / target_kl - 1, -0.2, 0.2)``; ``value *= 1 + error * n_steps / horizon``.
    """

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: int) -> None:
        if horizon <= 0:
            raise ValueError(f"AdaptiveKLController horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target_kl)
        self.horizon = horizon

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        """Move the coefficient after a step that measured ``current_kl`` over ``n_steps`` samples."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """The controller's state, for checkpoints."""
        return {"value": self.value, "target": self.target, "horizon": float(self.horizon)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore :meth:`state_dict` output (the coefficient; target and horizon come from config)."""
        self.value = float(state["value"])


KLController = FixedKLController | AdaptiveKLController


def make_kl_controller(
    kind: str, kl_coef: float, target_kl: float | None = None, horizon: int | None = None
) -> KLController:
    """The controller for ``algo.kl_ctrl.type`` (``fixed`` or ``adaptive``).

    Raises:
        ValueError: Unknown ``kind``, or ``adaptive`` without ``target_kl``/``horizon``.
    """
    if kind == "fixed":
        return FixedKLController(kl_coef)
    if kind == "adaptive":
        if target_kl is None or horizon is None:
            raise ValueError("an adaptive KL controller needs target_kl and horizon")
        return AdaptiveKLController(kl_coef, target_kl, horizon)
    raise ValueError(f"unknown KL controller {kind!r}; valid: fixed, adaptive")


def apply_kl_penalty(
    token_level_scores: Tensor,
    old_log_prob: Tensor,
    ref_log_prob: Tensor,
    response_mask: Tensor,
    kl_coef: float,
    kl_penalty: str = "kl",
) -> tuple[Tensor, Tensor]:
    """KL-in-reward: subtract ``kl_coef`` times the per-token KL from the scores.

    ``kld = kl_penalty(old, ref) * mask``; ``rewards = scores - kl_coef * kld``;
    ``current_kl = mean over responses of masked_mean(kld, mask, dim=-1)`` (verl's metric
    ``actor/reward_kl_penalty``; an all-masked response counts as 0, as in verl). The caller feeds
    ``current_kl`` to its controller: ``ctrl.update(current_kl, n_steps=B)``.

    Args:
        token_level_scores: Rewards from the scorers.
        old_log_prob: Log-probs of the rollout under the actor.
        ref_log_prob: Log-probs under the reference policy.
        response_mask: 0/1 response mask.
        kl_coef: The controller's current ``value``.
        kl_penalty: Estimator name (see :func:`kl_penalty`).

    Returns:
        ``(token_level_rewards, current_kl)``: float32 rewards and a 0-dim float32 tensor.

    Shape:
        token_level_scores, old_log_prob, ref_log_prob, response_mask: (B, L).
        token_level_rewards: (B, L).
    """
    mask = response_mask.float()
    estimate = _kl_estimate(old_log_prob.detach(), ref_log_prob.detach(), kl_penalty)
    kld = torch.where(mask > 0, estimate, torch.zeros_like(estimate)) * mask
    rewards = token_level_scores.float() - kl_coef * kld
    current_kl = masked_mean(kld, mask, dim=-1).mean()
    return rewards, current_kl
