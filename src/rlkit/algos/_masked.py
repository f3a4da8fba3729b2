"""Masked reductions over padded ``(B, L)`` batches.

Shape legend used in this package:

- ``B``: responses in the batch (prompts x ``rollout.n``); verl calls it ``bs``.
- ``L``: padded response length.
- ``G``: distinct groups (prompts) in the batch.
- ``V``: vocabulary size.

Every function computes in float32 and returns float32, whatever the input dtype (bf16 inputs are
upcast first): reductions over thousands of tokens lose digits in bf16.

Masked positions never contribute, not even when they hold ``inf`` or ``nan`` (padding log-probs
often do): values are selected with ``torch.where`` before any arithmetic, so neither the value nor
the gradient of a masked position can leak into a result.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "masked_max",
    "masked_mean",
    "masked_min",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "safe_denominator",
]


def safe_denominator(count: Tensor) -> Tensor:
    """``count`` with zeros replaced by one, so that ``0 / 0`` becomes ``0`` instead of ``nan``.

    A masked sum over an empty selection is exactly zero, so dividing it by one keeps it zero; this
    is why an all-masked row or batch yields a zero loss rather than ``nan``.
    """
    return torch.where(count > 0, count, torch.ones_like(count))


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``values`` where ``mask`` is set.

    Args:
        values: The tensor to reduce.
        mask: 0/1 (or bool) weights, broadcastable to ``values``.
        dim: Dimension to reduce; ``None`` reduces everything to a scalar.

    Returns:
        The masked sum in float32: a 0-dim tensor when ``dim`` is None, else ``values`` without ``dim``.

    Shape:
        values: (B, L) or any shape.
        mask: broadcastable to ``values``.
    """
    values = values.float()
    mask_f = mask.float()
    selected = torch.where(mask_f != 0, values, torch.zeros_like(values)) * mask_f
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over the positions where ``mask`` is set; ``0`` where nothing is set.

    verl divides by ``mask.sum() + 1e-8``; dividing by the exact count (one when empty) gives the
    same numbers to float32 precision and an exact zero for empty selections.

    Args:
        values: The tensor to reduce.
        mask: 0/1 (or bool) weights, broadcastable to ``values``.
        dim: Dimension to reduce; ``None`` reduces everything.

    Returns:
        The masked mean in float32.

    Shape:
        values: (B, L) or any shape.
        mask: broadcastable to ``values``.
    """
    count = mask.float().expand_as(values).sum() if dim is None else mask.float().expand_as(values).sum(dim)
    return masked_sum(values, mask, dim) / safe_denominator(count)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``values`` over the masked positions (a scalar).

    With ``unbiased`` the Bessel factor ``N / (N - 1)`` is applied when ``N > 1``. verl raises when
    ``N`` is 0 or 1; here the variance is simply ``0`` then, so a batch with a single valid token
    whitens to zeros instead of crashing a run.

    Args:
        values: The tensor whose masked variance is wanted.
        mask: 0/1 (or bool) weights of the same shape.
        unbiased: Apply Bessel's correction.

    Returns:
        A 0-dim float32 tensor.

    Shape:
        values: (B, L).
        mask: (B, L).
    """
    mean = masked_mean(values, mask)
    var = masked_mean((values.float() - mean) ** 2, mask)
    if unbiased:
        count = mask.float().sum()
        bessel = torch.where(count > 1, count / safe_denominator(count - 1), torch.ones_like(count))
        var = var * bessel
    return var


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise ``values`` to zero mean and unit variance using masked statistics.

    ``(values - mean) * rsqrt(var + 1e-8)``, with ``mean``/``var`` over the masked positions (verl's
    ``masked_whiten``). With ``shift_mean=False`` the mean is added back (scale only).

    Args:
        values: The tensor to whiten.
        mask: 0/1 (or bool) weights of the same shape.
        shift_mean: Subtract the mean (``True``) or only rescale.

    Returns:
        Float32 tensor of the shape of ``values``; positions outside the mask are whitened too and are
        the caller's to zero.

    Shape:
        values: (B, L).
        mask: (B, L).
    """
    values = values.float()
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def masked_max(values: Tensor, mask: Tensor) -> Tensor:
    """Maximum over the masked positions (a 0-dim float32 tensor); ``0`` when nothing is masked in.

    Shape:
        values: (B, L) or any shape.
        mask: broadcastable to ``values``.
    """
    values = values.float()
    keep = mask.bool().expand_as(values)
    filled = torch.where(keep, values, torch.full_like(values, float("-inf"))).max()
    return torch.where(keep.any(), filled, torch.zeros_like(filled))


def masked_min(values: Tensor, mask: Tensor) -> Tensor:
    """Minimum over the masked positions (a 0-dim float32 tensor); ``0`` when nothing is masked in.

    Shape:
        values: (B, L) or any shape.
        mask: broadcastable to ``values``.
    """
    return -masked_max(-values.float(), mask)
