"""Loss aggregation: a ``(B, L)`` per-token loss matrix to one scalar.

Shapes: ``B`` responses, ``L`` response length (legend in :mod:`rlkit.algos._masked`).

The global-batch arguments make a loss independent of how the batch is cut. With ``T`` the valid
tokens and ``S`` the non-empty sequences of the whole (mini-)batch over all data-parallel workers,
a worker that passes ``dp_size``, ``batch_num_tokens=T``, ``global_batch_size=S`` (and a fixed
``loss_scale_factor``) for each of its micro-batches gets losses whose sum over micro-batches, averaged
over workers (what FSDP's gradient averaging does), equals the loss of the whole batch computed in one
piece. Without them each micro-batch is normalised by its own counts (verl's legacy path).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from rlkit.algos._masked import masked_sum, safe_denominator

__all__ = ["AGG_KWARGS", "LOSS_AGG_MODES", "agg_loss", "pick_agg_kwargs"]

LOSS_AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
"""The aggregation modes ``agg_loss`` accepts (verl's ``actor.loss_agg_mode`` values)."""

AGG_KWARGS: tuple[str, ...] = ("dp_size", "batch_num_tokens", "global_batch_size", "loss_scale_factor")
"""The global-batch keywords of ``agg_loss``; losses forward exactly these from their ``**kwargs``."""

Count = int | float | Tensor


def pick_agg_kwargs(kwargs: Mapping[str, object]) -> dict[str, Any]:
    """The subset of ``kwargs`` that :func:`agg_loss` understands (the global-batch arguments)."""
    return {key: kwargs[key] for key in AGG_KWARGS if key in kwargs and kwargs[key] is not None}


def _as_tensor(value: Count, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=torch.float32)
    # a fill kernel: a host-to-device copy of a Python number would wait for the queued GPU work
    return torch.full((), float(value), dtype=torch.float32, device=like.device)


def _seq_mean(seq_losses: Tensor, seq_valid: Tensor, dp_size: int, global_batch_size: Count | None) -> Tensor:
    """Mean over non-empty sequences, normalised by the global sequence count when given."""
    denominator = seq_valid.sum() if global_batch_size is None else _as_tensor(global_batch_size, seq_losses)
    return masked_sum(seq_losses, seq_valid) / safe_denominator(denominator) * dp_size


def agg_loss(
    loss_mat: Tensor,
    loss_mask: Tensor,
    loss_agg_mode: str,
    dp_size: int = 1,
    batch_num_tokens: Count | None = None,
    global_batch_size: Count | None = None,
    loss_scale_factor: Count | None = None,
) -> Tensor:
    """Aggregate a per-token loss matrix into a scalar (verl's ``agg_loss``, §2.3).

    Modes, with ``m`` the mask and ``S`` the sequences that have at least one valid token:

    - ``token-mean``: ``sum(L*m) / batch_num_tokens * dp_size``; ``batch_num_tokens`` defaults to ``sum(m)``.
    - ``token-sum``: ``sum(L*m) * dp_size``: the plain sum over every valid token of the global batch
      (FSDP's average over workers turns the per-worker sums back into the global sum). Used where the
      per-token terms are already normalised, e.g. on-policy distillation's per-token KL; verl's
      ``token-sum`` (https://github.com/volcengine/verl, ``core_algos.agg_loss``).
    - ``seq-mean-token-sum``: ``sum_{i in S} sum_t L*m / global_batch_size * dp_size``; the default
      ``global_batch_size`` is ``|S|``.
    - ``seq-mean-token-mean``: as above with each sequence's loss ``sum_t L*m / sum_t m``.
    - ``seq-mean-token-sum-norm`` (Dr.GRPO): ``sum_i sum_t L*m / loss_scale_factor * dp_size``;
      ``loss_scale_factor`` defaults to ``L`` (pass a constant, e.g. ``data.max_response_length``, so
      the normaliser does not change with the padded length of a micro-batch).

    Deviation from verl: verl does not multiply ``seq-mean-token-sum-norm`` by ``dp_size``, so its
    gradient shrinks by ``1/dp_size`` when FSDP averages it over workers; here every mode is invariant to
    the number of workers. With ``dp_size=1`` the numbers are verl's. Empty selections give ``0``, not
    ``nan``.

    Args:
        loss_mat: Per-token losses.
        loss_mask: 0/1 mask of tokens that count.
        loss_agg_mode: One of :data:`LOSS_AGG_MODES`.
        dp_size: Data-parallel workers whose gradients are averaged.
        batch_num_tokens: Valid tokens of the global batch (``token-mean``).
        global_batch_size: Non-empty sequences of the global batch (``seq-mean-*``).
        loss_scale_factor: Constant normaliser for ``seq-mean-token-sum-norm``.

    Returns:
        A 0-dim float32 tensor.

    Raises:
        ValueError: ``loss_agg_mode`` is not one of :data:`LOSS_AGG_MODES`.

    Shape:
        loss_mat: (B, L).
        loss_mask: (B, L).
    """
    if loss_agg_mode == "token-mean":
        tokens = (
            loss_mask.float().sum() if batch_num_tokens is None else _as_tensor(batch_num_tokens, loss_mat)
        )
        return masked_sum(loss_mat, loss_mask) / safe_denominator(tokens) * dp_size
    if loss_agg_mode == "token-sum":
        return masked_sum(loss_mat, loss_mask) * dp_size
    seq_tokens = loss_mask.float().sum(dim=-1)
    seq_valid = (seq_tokens > 0).float()
    if loss_agg_mode == "seq-mean-token-sum":
        return _seq_mean(masked_sum(loss_mat, loss_mask, dim=-1), seq_valid, dp_size, global_batch_size)
    if loss_agg_mode == "seq-mean-token-mean":
        seq_losses = masked_sum(loss_mat, loss_mask, dim=-1) / safe_denominator(seq_tokens)
        return _seq_mean(seq_losses, seq_valid, dp_size, global_batch_size)
    if loss_agg_mode == "seq-mean-token-sum-norm":
        scale = loss_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor
        return masked_sum(loss_mat, loss_mask) / _as_tensor(scale, loss_mat) * dp_size
    raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}; valid modes: {', '.join(LOSS_AGG_MODES)}")
