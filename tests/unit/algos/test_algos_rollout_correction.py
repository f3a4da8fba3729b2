"""Rollout correction (rlkit.algos.rollout_correction): TIS, MIS, veto and mismatch metrics."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit.algos import compute_rollout_correction_and_rejection_mask

E = math.e
# Row 0: log-ratios (train - rollout) 0, 1 and a masked -0.5. Row 1: -2, 0, 0 (a catastrophic token).
TRAIN = torch.tensor([[-1.0, -1.0, -1.0], [-3.0, -1.0, -1.0]])
ROLLOUT = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def correct(**kwargs: object) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, torch.Tensor]]:
    return compute_rollout_correction_and_rejection_mask(TRAIN[:1], ROLLOUT[:1], MASK[:1], **kwargs)


def test_nothing_enabled_gives_no_weights_and_the_same_mask() -> None:
    weights, mask, metrics = correct()
    assert weights is None
    assert mask.tolist() == MASK[:1].tolist()
    assert all(key.startswith("rollout_corr/") for key in metrics)
    assert metrics["rollout_corr/rollout_is_veto_fraction"].item() == 0.0


def test_token_tis_by_hand() -> None:
    weights, mask, metrics = correct(rollout_is="token", rollout_is_threshold=2.0)
    assert weights is not None
    assert weights[0].tolist() == pytest.approx([1.0, 2.0, 0.0])  # e truncated to 2, padding 0
    assert not weights.requires_grad
    assert mask.tolist() == MASK[:1].tolist()
    assert metrics["rollout_corr/rollout_is_mean"].item() == pytest.approx((1.0 + E) / 2, rel=1e-5)
    assert metrics["rollout_corr/rollout_is_max"].item() == pytest.approx(E, rel=1e-5)
    assert metrics["rollout_corr/rollout_is_min"].item() == pytest.approx(1.0)
    assert metrics["rollout_corr/rollout_is_ratio_fraction_high"].item() == 0.5


def test_sequence_tis_and_batch_normalisation_by_hand() -> None:
    weights, _, metrics = correct(rollout_is="sequence", rollout_is_threshold=2.0)
    assert weights is not None and weights[0].tolist() == pytest.approx([2.0, 2.0, 0.0])  # e**(0 + 1) -> 2
    assert metrics["rollout_corr/rollout_is_ratio_fraction_high"].item() == 1.0  # one sequence, above 2
    normalised, _, metrics = correct(
        rollout_is="token", rollout_is_threshold=2.0, rollout_is_batch_normalize=True
    )
    assert normalised is not None and normalised[0].tolist() == pytest.approx([2 / 3, 4 / 3, 0.0])
    assert metrics["rollout_corr/rollout_is_batch_norm_factor"].item() == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("level", "expected_mask", "masked_fraction"),
    [
        ("token", [[1.0, 0.0, 0.0]], 0.5),  # ratio e > 2 rejected
        ("sequence", [[0.0, 0.0, 0.0]], 1.0),  # product e > 2: whole sequence rejected
        ("geometric", [[1.0, 1.0, 0.0]], 0.0),  # geometric mean e**0.5 in [1/2, 2]: kept
    ],
)
def test_rejection_levels_by_hand(
    level: str, expected_mask: list[list[float]], masked_fraction: float
) -> None:
    weights, mask, metrics = correct(rollout_rs=level, rollout_rs_threshold=2.0)
    assert weights is None
    assert mask.tolist() == expected_mask
    assert metrics["rollout_corr/rollout_rs_masked_fraction"].item() == pytest.approx(masked_fraction)


def test_rejection_lower_threshold() -> None:
    _, mask, _ = compute_rollout_correction_and_rejection_mask(
        TRAIN, ROLLOUT, MASK, rollout_rs="token", rollout_rs_threshold=3.0, rollout_rs_threshold_lower=0.2
    )
    # Ratios: row 0 (1, e), row 1 (e**-2 = 0.135 < 0.2, 1, 1).
    assert mask.tolist() == [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]


def test_veto_rejects_whole_sequences() -> None:
    _, mask, metrics = compute_rollout_correction_and_rejection_mask(
        TRAIN, ROLLOUT, MASK, rollout_token_veto_threshold=0.5
    )
    assert mask.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert metrics["rollout_corr/rollout_is_veto_fraction"].item() == 0.5
    assert metrics["rollout_corr/rollout_is_catastrophic_token_fraction"].item() == pytest.approx(1 / 5)


def test_mismatch_metrics_by_hand() -> None:
    _, _, metrics = correct()
    # Valid log-ratios 0 and 1: k1 of KL(rollout || train) = mean(rollout - train) = -0.5;
    # k3 = mean(e**r - r - 1) = (0 + e - 2) / 2; mean |diff| = 0.5, max 1.
    assert metrics["rollout_corr/kl"].item() == pytest.approx(-0.5)
    assert metrics["rollout_corr/k3_kl"].item() == pytest.approx((E - 2.0) / 2, rel=1e-5)
    assert metrics["rollout_corr/log_prob_abs_diff_mean"].item() == pytest.approx(0.5)
    assert metrics["rollout_corr/log_prob_abs_diff_max"].item() == pytest.approx(1.0)
    assert metrics["rollout_corr/training_ppl"].item() == pytest.approx(E, rel=1e-5)  # mean log-prob -1
    assert metrics["rollout_corr/rollout_ppl"].item() == pytest.approx(math.exp(1.5), rel=1e-5)
    assert metrics["rollout_corr/chi2_token"].item() == pytest.approx((1.0 + E**2) / 2 - 1.0, rel=1e-5)


def test_extreme_gaps_and_empty_rows_stay_finite() -> None:
    train = torch.tensor([[0.0, -900.0], [-1.0, -1.0]])
    rollout = torch.tensor([[-900.0, 0.0], [-1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    weights, new_mask, metrics = compute_rollout_correction_and_rejection_mask(
        train, rollout, mask, rollout_is="sequence", rollout_rs="token", rollout_token_veto_threshold=1e-4
    )
    assert weights is not None and torch.isfinite(weights).all()
    assert all(torch.isfinite(value) for value in metrics.values())
    assert new_mask.tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="token"):
        correct(rollout_is="tokens")
    with pytest.raises(ValueError, match="geometric"):
        correct(rollout_rs="seq")
    with pytest.raises(ValueError, match="shape"):
        compute_rollout_correction_and_rejection_mask(TRAIN, ROLLOUT[:, :2], MASK)
