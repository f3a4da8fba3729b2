"""Group ids and per-group statistics, vectorised over the batch.

Shapes: ``B`` responses, ``G`` distinct groups (see :mod:`rlkit.algos._masked` for the legend).

GRPO-style estimators compare each response with the other responses to the same prompt. The
trainer marks the prompt with a group id (verl's ``uid``: a uuid string, but ints and tuples are
accepted too). Here those ids become a dense ``(B,)`` int64 tensor once, and every statistic is a
``scatter_add``/``bincount`` over it: no Python loop over samples or groups.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

__all__ = ["GroupIndex", "group_count", "group_ids", "group_mean", "group_std", "group_sum"]

GroupIndex: TypeAlias = "Tensor | NDArray[Any] | Sequence[Hashable]"
"""Group ids, one per response: a tensor, a numpy array (object arrays included) or a list."""


def _hashable_ids(index: NDArray[Any] | Sequence[Hashable]) -> list[Hashable]:
    """The ids as a list of hashable Python objects (rows of a 2-D array become tuples)."""
    if isinstance(index, np.ndarray):
        if index.ndim > 1:
            return [tuple(row) for row in index.tolist()]
        items: list[Hashable] = index.tolist()
        return items
    return [tuple(item) if isinstance(item, list) else item for item in index]


def group_ids(index: GroupIndex, device: torch.device | str | None = None) -> tuple[Tensor, int]:
    """Map arbitrary hashable group ids to dense ints ``0..G-1``.

    ``np.unique`` cannot sort ids of mixed types (a str next to an int, tuples), so ids are deduplicated
    with a dict, in order of first appearance; the only Python loop is over the distinct ids.

    Args:
        index: One group id per response: str uuids, ints, tuples, ... (or an int tensor).
        device: Where the returned tensor lives.

    Returns:
        ``(ids, num_groups)``: the dense int64 ids and ``G``.

    Shape:
        index: (B,), or (B, k) for a tensor / 2-D array whose rows are the ids.
        ids: (B,).
    """
    if isinstance(index, Tensor):
        dim = 0 if index.dim() > 1 else None
        uniques, inverse = torch.unique(index, return_inverse=True, dim=dim)
        return inverse.reshape(-1).to(device=device or index.device), int(uniques.shape[0])
    items = _hashable_ids(index)
    dense = {key: position for position, key in enumerate(dict.fromkeys(items))}
    ids = torch.tensor(list(map(dense.__getitem__, items)), dtype=torch.long, device=device)
    return ids, len(dense)


def group_sum(values: Tensor, ids: Tensor, num_groups: int) -> Tensor:
    """Per-group sums of ``values`` (float32).

    Shape:
        values: (B,).
        ids: (B,), ints in ``[0, G)``.
        return: (G,).
    """
    values = values.float()
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, ids, values)


def group_count(ids: Tensor, num_groups: int) -> Tensor:
    """Group sizes as float32.

    Shape:
        ids: (B,).
        return: (G,).
    """
    return torch.bincount(ids, minlength=num_groups).float()


def group_mean(values: Tensor, ids: Tensor, num_groups: int, singleton_mean: float | None = None) -> Tensor:
    """Per-group means, broadcast back to the responses.

    Args:
        values: One value per response.
        ids: Dense group ids from :func:`group_ids`.
        num_groups: ``G``.
        singleton_mean: If set, groups of size 1 get this mean instead of their own value (verl's GRPO
            gives a lone response mean 0, so its advantage is its raw score).

    Returns:
        The mean of each response's group, float32.

    Shape:
        values: (B,).
        ids: (B,).
        return: (B,).
    """
    counts = group_count(ids, num_groups)
    means = group_sum(values, ids, num_groups) / counts.clamp(min=1)
    if singleton_mean is not None:
        means = torch.where(counts > 1, means, torch.full_like(means, singleton_mean))
    return means[ids]


def group_std(values: Tensor, ids: Tensor, num_groups: int, singleton_std: float = 1.0) -> Tensor:
    """Per-group unbiased standard deviation (``torch.std``), broadcast back to the responses.

    Groups of size 1 have no unbiased std; they get ``singleton_std`` (verl's GRPO uses 1).

    Shape:
        values: (B,).
        ids: (B,).
        return: (B,).
    """
    values = values.float()
    counts = group_count(ids, num_groups)
    means = group_sum(values, ids, num_groups) / counts.clamp(min=1)
    squares = group_sum((values - means[ids]) ** 2, ids, num_groups)
    var = squares / (counts - 1).clamp(min=1)
    std = torch.where(counts > 1, var.sqrt(), torch.full_like(var, singleton_std))
    return std[ids]
