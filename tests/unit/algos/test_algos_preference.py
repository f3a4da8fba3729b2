"""SPIN's online DPO/IPO and SPPO (rlkit.algos.preference)."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit.algos import compute_online_dpo_loss, compute_onlinedpo_pref, compute_sppo_loss, sppo_advantages


def test_onlinedpo_pref_by_hand() -> None:
    rewards = torch.tensor([[0.0, 1.0], [0.0, 2.0], [3.0, 0.0], [1.0, 0.0], [1.0, 1.0], [2.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0]] * 5 + [[1.0, 0.0]])  # the 9 is past the end of the last response
    # Scores 1 | 2, 3 | 1, 2 | 2 (tie: the first is chosen).
    assert compute_onlinedpo_pref(rewards, mask).tolist() == [False, True, True, False, True, False]
    with pytest.raises(ValueError, match="even"):
        compute_onlinedpo_pref(rewards[:3], mask[:3])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_dpo_sigmoid_ipo_and_smoothing_by_hand() -> None:
    chosen, rejected = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    ref_chosen, ref_rejected = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])
    # Margins x = (pi_c - pi_r) - (ref_c - ref_r) = 1 and -2.
    loss = compute_online_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1)
    assert loss.item() == pytest.approx((softplus(-0.1) + softplus(0.2)) / 2, rel=1e-6)
    smoothed = compute_online_dpo_loss(
        chosen, rejected, ref_chosen, ref_rejected, beta=0.1, label_smoothing=0.2
    )
    expected = (0.8 * softplus(-0.1) + 0.2 * softplus(0.1) + 0.8 * softplus(0.2) + 0.2 * softplus(-0.2)) / 2
    assert smoothed.item() == pytest.approx(expected, rel=1e-6)
    ipo = compute_online_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, loss_type="ipo")
    assert ipo.item() == pytest.approx(((1 - 5) ** 2 + (-2 - 5) ** 2) / 2)
    free = compute_online_dpo_loss(
        chosen, rejected, ref_chosen * 100, ref_rejected, beta=0.1, reference_free=True
    )
    assert free.item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="ipo"):
        compute_online_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, loss_type="hinge")


def test_dpo_gradient_pushes_chosen_up() -> None:
    chosen = torch.tensor([-1.0], requires_grad=True)
    compute_online_dpo_loss(
        chosen, torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), 0.5
    ).backward()
    assert chosen.grad is not None and chosen.grad.item() == pytest.approx(-0.5 * 0.5)  # -beta * sigmoid(0)


def test_sppo_loss_by_hand() -> None:
    new = torch.tensor([[-1.0, -1.0], [-2.0, 0.0], [-5.0, -5.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0], [-1.0, -1.0], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # the last response is empty
    loss, log_ratios, scaled = compute_sppo_loss(old, new, torch.tensor([0.5, -1.0, 3.0]), mask, eta=2.0)
    # Log-ratios 0.5 and -1; targets 1 and -2: ((0.5 - 1)**2 + (-1 + 2)**2) / 2 responses.
    assert loss.item() == pytest.approx(0.625)
    assert log_ratios[:2].tolist() == pytest.approx([0.5, -1.0])
    assert scaled.tolist() == pytest.approx([1.0, -2.0, 6.0])
    loss.backward()
    assert new.grad is not None and new.grad[1, 1].item() == 0.0 and new.grad[2].abs().sum().item() == 0.0


def test_sppo_advantages_by_hand() -> None:
    scores = torch.tensor([1.0, 3.0, 5.0])
    assert sppo_advantages(scores, ["a", "a", "b"], beta=0.0).tolist() == pytest.approx([-1.0, 1.0, 0.0])
    soft = math.log((math.e + math.e**3) / 2)  # (1 / beta) log mean exp(beta x) with beta = 1
    assert sppo_advantages(scores, ["a", "a", "b"], beta=1.0).tolist() == pytest.approx(
        [1.0 - soft, 3.0 - soft, 0.0], rel=1e-5
    )
    whole = 2.0 * math.log((math.exp(0.5) + math.exp(1.5) + math.exp(2.5)) / 3)  # beta = 0.5
    assert sppo_advantages(scores, None, beta=0.5).tolist() == pytest.approx(
        [1.0 - whole, 3.0 - whole, 5.0 - whole], rel=1e-5
    )
    large = sppo_advantages(torch.tensor([1000.0, 1001.0]), [0, 0], beta=10.0)
    assert torch.isfinite(large).all()
