"""Pairwise and self-play preference losses: online DPO/IPO for SPIN, the SPPO loss and targets.

Shapes (legend in :mod:`rlkit.algos._masked`): ``B`` responses, ``L`` response length, ``P`` pairs.

SPIN (https://arxiv.org/abs/2401.01335) trains with DPO on pairs of responses sampled from the
model itself, the reference being the model of the previous iteration. The two responses to a prompt
sit next to each other in the batch (rows ``2i`` and ``2i + 1``). SPPO
(https://arxiv.org/abs/2405.00675) regresses the sequence log-ratio onto ``eta`` times a centred reward.
Names and semantics follow verl's ``recipe/spin`` and ``recipe/sppo``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rlkit.algos._groups import GroupIndex, group_count, group_ids
from rlkit.algos._masked import masked_sum
from rlkit.algos.aggregation import Count, agg_loss

__all__ = [
    "compute_online_dpo_loss",
    "compute_online_dpo_weights",
    "compute_onlinedpo_pref",
    "compute_sppo_loss",
    "compute_sppo_outcome_advantage",
    "sppo_advantages",
]


@torch.no_grad()
def compute_onlinedpo_pref(token_level_rewards: Tensor, response_mask: Tensor) -> Tensor:
    """Which response of each interleaved pair is the chosen one.

    A response's score is its rewards summed over the mask; the higher score of rows ``2i``/``2i + 1``
    wins, and on a tie the first (``torch.argmax`` semantics; tied pairs are kept, as in verl).

    Args:
        token_level_rewards: Per-token rewards, pairs interleaved.
        response_mask: 0/1 response mask.

    Returns:
        A bool mask, True on the chosen response of each pair (exactly one per pair).

    Raises:
        ValueError: Odd batch size or mismatched shapes.

    Shape:
        token_level_rewards: (2P, L).
        response_mask: (2P, L).
        return: (2P,).
    """
    if token_level_rewards.shape != response_mask.shape:
        raise ValueError(
            f"shape mismatch: rewards {tuple(token_level_rewards.shape)}, mask {tuple(response_mask.shape)}"
        )
    if token_level_rewards.shape[0] % 2 != 0:
        raise ValueError(f"pairs need an even batch size, got {token_level_rewards.shape[0]}")
    scores = masked_sum(token_level_rewards, response_mask, dim=-1).reshape(-1, 2)
    second_wins = scores[:, 1] > scores[:, 0]
    return torch.stack([~second_wins, second_wins], dim=1).reshape(-1)


def compute_online_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    reference_free: bool = False,
) -> Tensor:
    """DPO (sigmoid) or IPO loss on sequence log-probs, averaged over pairs.

    Papers: DPO https://arxiv.org/abs/2305.18290 (conservative DPO label smoothing);
    IPO https://arxiv.org/abs/2310.12036.

    ``x = (pi_c - pi_r) - (ref_c - ref_r)`` (reference term 0 when ``reference_free``).
    ``sigmoid``: ``-(1 - eps) logsigmoid(beta x) - eps logsigmoid(-beta x)``. ``ipo``: ``(x - 1 / (2 beta))**2``.

    Args:
        policy_chosen_logps: Summed log-probs of the chosen responses under the policy.
        policy_rejected_logps: Same for the rejected responses.
        reference_chosen_logps: Chosen responses under the reference.
        reference_rejected_logps: Rejected responses under the reference.
        beta: Inverse temperature (SPIN's ``actor.dpo_beta``, 0.1 in verl's recipe).
        label_smoothing: Probability ``eps`` that a label is flipped (sigmoid only).
        loss_type: ``sigmoid`` (DPO) or ``ipo``.
        reference_free: Drop the reference log-ratio.

    Returns:
        A 0-dim float32 loss.

    Raises:
        ValueError: Unknown ``loss_type``.

    Shape:
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps: (P,).
    """
    logits = policy_chosen_logps.float() - policy_rejected_logps.float()
    if not reference_free:
        logits = logits - (reference_chosen_logps.float() - reference_rejected_logps.float())
    if loss_type == "sigmoid":
        losses = (
            -F.logsigmoid(beta * logits) * (1.0 - label_smoothing)
            - F.logsigmoid(-beta * logits) * label_smoothing
        )
    elif loss_type == "ipo":
        losses = (logits - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid: sigmoid, ipo")
    return losses.mean()


def compute_online_dpo_weights(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    reference_free: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sequence weights that give the DPO/IPO pair loss's gradient one sequence at a time.

    With ``s`` a response's summed log-probs and ``l_p`` the loss of pair ``p``
    (:func:`compute_online_dpo_loss` of that pair alone), the weights are ``w_c = -dl_p/ds_c`` and
    ``w_r = -dl_p/ds_r`` at the given log-probs. The surrogate ``-mean_p(w_c s_c + w_r s_r)`` has the
    gradient of the pair loss at these log-probs, and each of its terms involves one sequence only, so
    a trainer may cut pairs across micro-batches and ranks (a plain policy-gradient loss
    ``-w * sum_t logp`` does it). For ``sigmoid``: ``w_c = -w_r = beta (sigmoid(-beta x) (1 - eps) -
    sigmoid(beta x) eps)``; for ``ipo``: ``w_c = -w_r = -2 (x - 1 / (2 beta))``. The weights come from
    autograd through :func:`compute_online_dpo_loss`, so they follow it exactly.

    Args:
        policy_chosen_logps: Summed log-probs of the chosen responses under the policy.
        policy_rejected_logps: Same for the rejected responses.
        reference_chosen_logps: Chosen responses under the reference.
        reference_rejected_logps: Rejected responses under the reference.
        beta: Inverse temperature.
        label_smoothing: Probability that a label is flipped (sigmoid only).
        loss_type: ``sigmoid`` (DPO) or ``ipo``.
        reference_free: Drop the reference log-ratio.

    Returns:
        ``(chosen_weights, rejected_weights, loss)``: float32 weights without gradient and the pair
        loss (mean over pairs, detached).

    Raises:
        ValueError: No pairs, mismatched shapes, or an unknown ``loss_type``.

    Shape:
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps: (P,).
        chosen_weights, rejected_weights: (P,).
    """
    shapes = {
        tuple(t.shape)
        for t in (
            policy_chosen_logps,
            policy_rejected_logps,
            reference_chosen_logps,
            reference_rejected_logps,
        )
    }
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"DPO weights need four (P,) tensors of one shape, got shapes {sorted(shapes)}")
    num_pairs = policy_chosen_logps.shape[0]
    if num_pairs == 0:
        raise ValueError("DPO weights need at least one pair")
    chosen = policy_chosen_logps.detach().float().requires_grad_(True)
    rejected = policy_rejected_logps.detach().float().requires_grad_(True)
    with torch.enable_grad():
        loss = compute_online_dpo_loss(
            chosen,
            rejected,
            reference_chosen_logps.detach(),
            reference_rejected_logps.detach(),
            beta,
            label_smoothing=label_smoothing,
            loss_type=loss_type,
            reference_free=reference_free,
        )
        grad_chosen, grad_rejected = torch.autograd.grad(loss, (chosen, rejected))
    # the loss is a mean over pairs: scale by P to get each pair's own derivative
    return -grad_chosen * num_pairs, -grad_rejected * num_pairs, loss.detach()


def compute_sppo_loss(
    old_log_prob: Tensor,
    log_prob: Tensor,
    rewards: Tensor,
    response_mask: Tensor,
    eta: float = 1.0,
    dp_size: int = 1,
    global_batch_size: Count | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """SPPO's squared loss between the sequence log-ratio and the scaled reward.

    Paper: Wu et al. 2024, https://arxiv.org/abs/2405.00675.

    ``loss_i = (sum_t logp m - sum_t old m - eta r_i)**2``, averaged over responses with at least one
    valid token (``global_batch_size``/``dp_size`` as in :func:`rlkit.algos.agg_loss`).

    Args:
        old_log_prob: Log-probs of the sampling policy.
        log_prob: Log-probs of the policy being trained.
        rewards: Centred sequence rewards (:func:`sppo_advantages`).
        response_mask: 0/1 response mask.
        eta: SPPO's ``eta`` (``actor.sppo_eta``).
        dp_size: Data-parallel workers whose gradients are averaged.
        global_batch_size: Non-empty responses of the global batch.

    Returns:
        ``(loss, log_ratios, scaled_rewards)`` as in verl: a 0-dim float32 loss and two (B,) tensors.

    Shape:
        old_log_prob, log_prob, response_mask: (B, L).
        rewards: (B,).
    """
    mask = response_mask.float()
    log_ratios = masked_sum(log_prob, mask, dim=-1) - masked_sum(old_log_prob, mask, dim=-1)
    scaled_rewards = eta * rewards.float()
    per_sequence = (log_ratios - scaled_rewards) ** 2
    valid = (mask.sum(-1) > 0).float()
    loss = agg_loss(
        per_sequence[:, None],
        valid[:, None],
        "seq-mean-token-sum",
        dp_size=dp_size,
        global_batch_size=global_batch_size,
    )
    return loss, log_ratios, scaled_rewards


@torch.no_grad()
def sppo_advantages(scores: Tensor, index: GroupIndex | None, beta: float) -> Tensor:
    """SPPO targets: each score minus the soft mean of its group.

    ``softmean_beta(x) = (1 / beta) log(mean_j exp(beta x_j))`` (the plain mean when ``beta == 0``): it
    estimates ``tau log Z(x)`` of the SPPO paper. With ``index`` the soft mean is over the responses to
    the same prompt, as ``Z(x)`` is per prompt; with ``index=None`` it is over the whole batch, which is
    what verl's recipe computes.

    Args:
        scores: Sequence scores (summed token rewards).
        index: Group id per response, or None for one group.
        beta: Soft-mean temperature (``0`` gives the arithmetic mean).

    Returns:
        Float32 centred scores.

    Shape:
        scores: (B,).
        index: (B,).
        return: (B,).
    """
    values = scores.float()
    if index is None:
        ids, num_groups = torch.zeros(values.shape[0], dtype=torch.long, device=values.device), 1
    else:
        ids, num_groups = group_ids(index, values.device)
    counts = group_count(ids, num_groups)
    if beta == 0.0:
        totals = torch.zeros(num_groups, device=values.device).index_add_(0, ids, values)
        return values - (totals / counts)[ids]
    scaled = values * beta
    peak = torch.full((num_groups,), float("-inf"), device=values.device).scatter_reduce(
        0, ids, scaled, "amax"
    )
    sums = torch.zeros(num_groups, device=values.device).index_add_(0, ids, torch.exp(scaled - peak[ids]))
    log_mean_exp = torch.log(sums) + peak - torch.log(counts)
    return values - (log_mean_exp / beta)[ids]


@torch.no_grad()
def compute_sppo_outcome_advantage(
    *,
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: GroupIndex | None = None,
    sppo_beta: float = 1.0,
    **_: object,
) -> tuple[Tensor, Tensor]:
    """SPPO's regression targets as an advantage estimator (``algo.advantage=sppo``).

    Paper: Wu et al. 2024, https://arxiv.org/abs/2405.00675. The per-response score
    ``s_i = sum_t r_it`` minus the soft mean of its group (:func:`sppo_advantages` with
    ``beta = sppo_beta``), on every valid token: verl's ``seq_level_rewards``, broadcast so that the
    ``sppo`` policy loss reads it like any advantage. ``returns = advantages``.

    Args:
        token_level_rewards: Per-token rewards.
        response_mask: 0/1 response mask.
        index: Group (prompt) id per response; None centres over the whole batch (verl).
        sppo_beta: Soft-mean temperature (0 = arithmetic mean).

    Returns:
        ``(advantages, returns)``, float32.

    Shape:
        token_level_rewards, response_mask: (B, L).
        index: (B,).
        advantages, returns: (B, L).
    """
    centred = sppo_advantages(token_level_rewards.float().sum(dim=-1), index, sppo_beta)
    advantages = centred.unsqueeze(-1) * response_mask.float()
    return advantages, advantages
