"""OTB: the optimal token baseline, a per-position baseline weighted by each path's gradient variance.

Paper / source: verl's ``optimal_token_baseline`` estimator (``docs/algo/otb.md``), after the
variance-optimal baseline of Weaver & Tao, "The Optimal Reward Baseline for Gradient-Based RL"
(https://arxiv.org/abs/1301.2315), applied per token.

Shapes (legend in :mod:`rlkit.algos._masked`): ``B`` responses, ``L`` response length, ``G`` groups.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlkit.algos._groups import GroupIndex, group_count, group_ids

__all__ = ["compute_optimal_token_baseline_advantage", "reward_to_go"]


def reward_to_go(token_level_rewards: Tensor, response_mask: Tensor) -> Tensor:
    """``G_t = sum_{j >= t} r_j m_j`` (undiscounted returns from each position), float32.

    Shape:
        token_level_rewards, response_mask, return: (B, L).
    """
    masked = torch.where(
        response_mask > 0, token_level_rewards.float(), torch.zeros_like(response_mask.float())
    )
    return masked.flip(-1).cumsum(-1).flip(-1)


def _zero_tail(baselines: Tensor, lengths: Tensor, ids: Tensor, num_groups: int) -> Tensor:
    """Zero the baseline past the second-longest response on a group's unique longest response."""
    longest = torch.zeros(num_groups, dtype=lengths.dtype, device=lengths.device)
    longest = longest.scatter_reduce(0, ids, lengths, "amax", include_self=False)
    is_longest = lengths == longest[ids]
    ties = torch.zeros(num_groups, device=lengths.device).index_add_(0, ids, is_longest.float())
    others = torch.where(is_longest, torch.full_like(lengths, -1), lengths)
    second = torch.full((num_groups,), -1, dtype=lengths.dtype, device=lengths.device)
    second = second.scatter_reduce(0, ids, others, "amax", include_self=True)
    sizes = group_count(ids, num_groups)
    rows = is_longest & (ties[ids] == 1) & (sizes[ids] > 1) & (longest[ids] > second[ids])
    positions = torch.arange(baselines.shape[-1], device=baselines.device)
    tail = rows.unsqueeze(-1) & (positions.unsqueeze(0) >= second[ids].unsqueeze(-1))
    return torch.where(tail, torch.zeros_like(baselines), baselines)


@torch.no_grad()
def compute_optimal_token_baseline_advantage(
    *,
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: GroupIndex,
    old_log_probs: Tensor,
    sum_pi_squared: Tensor,
    rollout_is_weights: Tensor | None = None,
    handle_zero_tail: bool = True,
    epsilon: float = 1e-8,
    **_: object,
) -> tuple[Tensor, Tensor]:
    """OTB advantages ``A_t = G_t - B_t`` with a baseline per group and position (verl's estimator).

    ``w_t = 1 - 2 pi_t + sum_v pi_v^2`` is ``||grad log pi(y_t)||^2`` of the softmax logits (a proxy for
    the variance a token adds), times ``rho_t^2`` with rollout IS weights; ``W_t = sum_{j <= t} w_j m_j``
    is the path's accumulated variance and ``B_t = sum_i G_it W_it m_it / (sum_i W_it m_it + epsilon)`` over
    the responses ``i`` of a group. A group of one gets ``B = 0``. With ``handle_zero_tail`` a group's
    unique longest response gets ``B = 0`` past the second-longest response's length (no other sample
    informs the baseline there). Vectorised over groups (``index_add``), no Python loop.

    Args:
        token_level_rewards: Per-token rewards.
        response_mask: 0/1 response mask.
        index: Group id per response.
        old_log_probs: Log-probs of the sampled tokens under the policy that is updated.
        sum_pi_squared: ``sum_v pi(v)^2`` of that policy at every position.
        rollout_is_weights: Optional rollout-correction IS weights ``rho`` (squared in ``w``).
        handle_zero_tail: Zero the unique longest response's baseline past the second-longest.
        epsilon: Added to the denominator.

    Returns:
        ``(advantages, returns)``: float32, ``returns`` the reward-to-go ``G``.

    Shape:
        token_level_rewards, response_mask, old_log_probs, sum_pi_squared, rollout_is_weights: (B, L).
        advantages, returns: (B, L).
    """
    mask = response_mask.float()
    valid = mask > 0
    returns = reward_to_go(token_level_rewards, mask)
    pi = torch.exp(torch.where(valid, old_log_probs.float(), torch.zeros_like(mask)))
    per_token = 1.0 - 2.0 * pi + torch.where(valid, sum_pi_squared.float(), torch.zeros_like(mask))
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights.float() ** 2
    path = torch.where(valid, per_token, torch.zeros_like(mask)).cumsum(-1)
    ids, num_groups = group_ids(index, mask.device)
    weighted = path * mask
    numerator = torch.zeros(num_groups, mask.shape[-1], device=mask.device).index_add_(
        0, ids, returns * weighted
    )
    denominator = torch.zeros_like(numerator).index_add_(0, ids, weighted) + epsilon
    baselines = (numerator / denominator)[ids]
    singleton = group_count(ids, num_groups)[ids] <= 1
    baselines = torch.where(singleton.unsqueeze(-1), torch.zeros_like(baselines), baselines)
    if handle_zero_tail:
        baselines = _zero_tail(baselines, mask.sum(-1).long(), ids, num_groups)
    return (returns - baselines) * mask, returns
