"""Masked reductions and group-id mapping (rlkit.algos._masked, rlkit.algos._groups)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlkit.algos import group_ids, masked_mean, masked_sum, masked_var, masked_whiten
from rlkit.algos._groups import group_mean, group_std
from rlkit.algos._masked import masked_max, masked_min

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_masked_sum_and_mean_by_hand() -> None:
    assert masked_sum(VALUES, MASK).item() == 7.0  # 1 + 2 + 4
    assert masked_mean(VALUES, MASK).item() == pytest.approx(7.0 / 3.0)
    assert masked_sum(VALUES, MASK, dim=-1).tolist() == [3.0, 4.0]
    assert masked_mean(VALUES, MASK, dim=-1).tolist() == [1.5, 4.0]


def test_masked_positions_holding_inf_or_nan_do_not_leak() -> None:
    values = VALUES.clone().requires_grad_(True)
    poisoned = values + torch.tensor([[0.0, 0.0, float("nan")], [0.0, float("-inf"), float("inf")]])
    total = masked_sum(poisoned, MASK)
    assert total.item() == 7.0
    total.backward()
    assert values.grad is not None
    assert values.grad.tolist() == MASK.tolist()


def test_empty_selection_gives_zero_not_nan() -> None:
    empty = torch.zeros_like(MASK)
    assert masked_mean(VALUES, empty).item() == 0.0
    assert masked_mean(VALUES, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), dim=-1).tolist() == [
        2.0,
        0.0,
    ]
    assert masked_var(VALUES, empty).item() == 0.0
    assert masked_max(VALUES, empty).item() == 0.0


def test_masked_var_unbiased_by_hand() -> None:
    # Values 1, 2, 4: mean 7/3, squared deviations sum = 16/9 + 1/9 + 25/9 = 42/9.
    assert masked_var(VALUES, MASK, unbiased=False).item() == pytest.approx(42.0 / 9.0 / 3.0)
    assert masked_var(VALUES, MASK).item() == pytest.approx(42.0 / 9.0 / 2.0)
    single = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert masked_var(VALUES, single).item() == 0.0


def test_masked_whiten_by_hand() -> None:
    mean, std = 7.0 / 3.0, math.sqrt(42.0 / 9.0 / 2.0 + 1e-8)
    whitened = masked_whiten(VALUES, MASK)
    assert whitened[0, 0].item() == pytest.approx((1.0 - mean) / std, rel=1e-5)
    assert whitened[1, 0].item() == pytest.approx((4.0 - mean) / std, rel=1e-5)
    assert masked_mean(whitened, MASK).item() == pytest.approx(0.0, abs=1e-6)
    scaled_only = masked_whiten(VALUES, MASK, shift_mean=False)
    assert scaled_only[0, 0].item() == pytest.approx((1.0 - mean) / std + mean, rel=1e-5)


def test_max_min_ignore_masked() -> None:
    assert masked_max(VALUES, MASK).item() == 4.0
    assert masked_min(VALUES, MASK).item() == 1.0


def test_bf16_inputs_are_reduced_in_fp32() -> None:
    values = torch.full((1, 4096), 1.0 + 2**-7, dtype=torch.bfloat16)
    total = masked_sum(values, torch.ones(1, 4096))
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(4096 * (1.0 + 2**-7))


@pytest.mark.parametrize(
    "index",
    [
        ["a", "b", "a", "c"],
        np.array(["a", "b", "a", "c"], dtype=object),
        [3, 7, 3, 9],
        np.array([3, 7, 3, 9]),
        [(0, "x"), (1, "y"), (0, "x"), (2, "z")],
        [1, "1", 1, (1,)],  # mixed types: np.unique would fail to sort these
        torch.tensor([5, 2, 5, 0]),
    ],
)
def test_group_ids_any_hashable(index: object) -> None:
    ids, num_groups = group_ids(index)
    assert num_groups == 3
    assert ids.dtype == torch.long
    assert ids[0] == ids[2]
    assert len({ids[0].item(), ids[1].item(), ids[3].item()}) == 3


def test_group_ids_2d_rows_are_ids() -> None:
    ids, num_groups = group_ids(np.array([[1, 2], [1, 3], [1, 2]], dtype=object))
    assert num_groups == 2 and ids[0] == ids[2] != ids[1]
    ids, num_groups = group_ids(torch.tensor([[1, 2], [1, 3], [1, 2]]))
    assert num_groups == 2 and ids[0] == ids[2] != ids[1]


def test_group_mean_and_std_by_hand() -> None:
    values = torch.tensor([1.0, 3.0, 10.0, 4.0])
    ids = torch.tensor([0, 0, 1, 2])
    assert group_mean(values, ids, 3).tolist() == [2.0, 2.0, 10.0, 4.0]
    assert group_mean(values, ids, 3, singleton_mean=0.0).tolist() == [2.0, 2.0, 0.0, 0.0]
    std = group_std(values, ids, 3, singleton_std=1.0)
    assert std.tolist() == pytest.approx([math.sqrt(2.0), math.sqrt(2.0), 1.0, 1.0])
