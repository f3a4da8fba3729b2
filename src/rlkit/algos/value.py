"""The clipped critic (value-function) loss of PPO.

Shapes (legend in :mod:`rlkit.algos._masked`): ``B`` responses, ``L`` response length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlkit.algos._masked import masked_mean
from rlkit.algos.aggregation import Count, agg_loss

__all__ = ["compute_value_loss"]


def compute_value_loss(
    vpreds: Tensor,
    returns: Tensor,
    values: Tensor,
    response_mask: Tensor,
    cliprange_value: float,
    loss_agg_mode: str = "token-mean",
    dp_size: int = 1,
    batch_num_tokens: Count | None = None,
    global_batch_size: Count | None = None,
    loss_scale_factor: Count | None = None,
) -> tuple[Tensor, Tensor]:
    """Clipped value loss (PPO's critic loss, as in verl and TRL).

    Paper: Schulman et al. 2017, https://arxiv.org/abs/1707.06347 (value clipping as in OpenAI baselines).

    ``v_clip = clamp(vpreds, values - c, values + c)``;
    ``loss = 0.5 * agg_loss(max((vpreds - R)**2, (v_clip - R)**2))``;
    ``clipfrac = masked_mean((v_clip - R)**2 > (vpreds - R)**2)``.

    Args:
        vpreds: Values predicted by the critic being trained.
        returns: Targets (``returns`` of the advantage estimator).
        values: Values of the critic at rollout time.
        response_mask: 0/1 response mask.
        cliprange_value: ``c``; verl's ``critic.cliprange_value`` defaults to 0.5.
        loss_agg_mode: See :func:`rlkit.algos.agg_loss`.
        dp_size: Global-batch argument of :func:`rlkit.algos.agg_loss`.
        batch_num_tokens: Global-batch argument of :func:`rlkit.algos.agg_loss`.
        global_batch_size: Global-batch argument of :func:`rlkit.algos.agg_loss`.
        loss_scale_factor: Global-batch argument of :func:`rlkit.algos.agg_loss`.

    Returns:
        ``(vf_loss, vf_clipfrac)``: 0-dim float32 tensors (the fraction is detached, in [0, 1]).

    Shape:
        vpreds, returns, values, response_mask: (B, L).
    """
    vpreds_f, returns_f, values_f = vpreds.float(), returns.float(), values.float()
    clipped = torch.clamp(vpreds_f, values_f - cliprange_value, values_f + cliprange_value)
    losses_unclipped = (vpreds_f - returns_f) ** 2
    losses_clipped = (clipped - returns_f) ** 2
    vf_loss = 0.5 * agg_loss(
        torch.maximum(losses_unclipped, losses_clipped),
        response_mask,
        loss_agg_mode,
        dp_size=dp_size,
        batch_num_tokens=batch_num_tokens,
        global_batch_size=global_batch_size,
        loss_scale_factor=loss_scale_factor,
    )
    clipfrac = masked_mean((losses_clipped > losses_unclipped).float(), response_mask).detach()
    return vf_loss, clipfrac
