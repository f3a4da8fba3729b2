"""Learning-rate schedules (verl's warmup + constant / cosine)."""

from __future__ import annotations

import math

import pytest

from rlkit.training.schedule import lr_lambda, lr_multiplier


def test_constant_with_warmup() -> None:
    fn = lr_lambda(schedule="constant", warmup_steps=4, total_steps=100)
    assert [fn(s) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_lambda(schedule="constant", warmup_steps=0, total_steps=0)(0) == 1.0


def test_cosine_with_warmup_and_floor() -> None:
    fn = lr_lambda(schedule="cosine", warmup_steps=2, total_steps=12, min_lr_ratio=0.1)
    assert fn(0) == 0.0 and fn(1) == 0.5
    assert fn(2) == pytest.approx(1.0)
    # Half-way through the decay: the mean of 1 and the floor.
    assert fn(7) == pytest.approx(0.55)
    assert fn(12) == pytest.approx(0.1)
    # Beyond total_steps the half-cosine turns back up, as in verl; it never drops below 0.
    assert fn(13) > 0.1
    values = [fn(s) for s in range(2, 13)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_cosine_without_floor_matches_formula() -> None:
    for step in range(11):
        expected = 0.5 * (1 + math.cos(math.pi * step / 10))
        assert lr_multiplier(step, schedule="cosine", warmup_steps=0, total_steps=10) == pytest.approx(
            expected
        )


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="linear"):
        lr_lambda(schedule="linear", warmup_steps=0, total_steps=1)
    with pytest.raises(ValueError):
        lr_lambda(schedule="cosine", warmup_steps=0, total_steps=1, min_lr_ratio=2.0)
