"""KL estimators, KL-in-reward and KL controllers (rlkit.algos.kl)."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit.algos import (
    AdaptiveKLController,
    FixedKLController,
    apply_kl_penalty,
    kl_penalty,
    make_kl_controller,
)

LN2 = math.log(2.0)


@pytest.mark.parametrize(
    ("name", "d_positive", "d_negative"),
    [
        # d = ln 2 (policy twice as likely as the reference) and d = -ln 2.
        ("kl", LN2, -LN2),
        ("k1", LN2, -LN2),
        ("abs", LN2, LN2),
        ("mse", 0.5 * LN2**2, 0.5 * LN2**2),
        ("k2", 0.5 * LN2**2, 0.5 * LN2**2),
        ("low_var_kl", 0.5 + LN2 - 1.0, 2.0 - LN2 - 1.0),
        ("k3", 0.5 + LN2 - 1.0, 2.0 - LN2 - 1.0),
    ],
)
def test_estimators_by_hand(name: str, d_positive: float, d_negative: float) -> None:
    logprob = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    values = kl_penalty(logprob, ref, name)
    assert values[0].tolist() == pytest.approx([d_positive, d_negative], rel=1e-5)
    plus = kl_penalty(logprob, ref, name + "+")
    assert torch.allclose(plus, values)


@pytest.mark.parametrize("name", ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"])
def test_plus_variants_have_the_k2_gradient(name: str) -> None:
    logprob = torch.tensor([[-0.3, -2.0, -1.1]], requires_grad=True)
    ref = torch.tensor([[-1.0, -0.5, -1.1]])
    kl_penalty(logprob, ref, name + "+").sum().backward()
    assert logprob.grad is not None
    # d/dlogprob of 0.5 * (logprob - ref)**2 is logprob - ref.
    assert logprob.grad[0].tolist() == pytest.approx([0.7, -1.5, 0.0], abs=1e-6)


def test_plain_k3_gradient_is_its_own() -> None:
    logprob = torch.tensor([[-0.3]], requires_grad=True)
    kl_penalty(logprob, torch.tensor([[-1.0]]), "k3").sum().backward()
    assert logprob.grad is not None
    # d/dlp of exp(ref - lp) - (ref - lp) - 1 is 1 - exp(ref - lp).
    assert logprob.grad.item() == pytest.approx(1.0 - math.exp(-0.7), rel=1e-5)


def test_k3_is_bounded_for_extreme_gaps() -> None:
    values = kl_penalty(torch.tensor([[-60.0, 0.0]]), torch.tensor([[0.0, -60.0]]), "k3")
    assert torch.isfinite(values).all()
    assert values[0, 0].item() == 10.0  # exp(20) - 20 - 1 (the exponent is clamped to 20), clamped to 10
    assert values[0, 1].item() == 10.0  # exp(-60) + 60 - 1 = 59, clamped to 10, as in verl
    assert kl_penalty(torch.tensor([[0.0]]), torch.tensor([[-5.0]]), "k3").item() == pytest.approx(
        math.exp(-5.0) + 5.0 - 1.0
    )


def test_unknown_and_full() -> None:
    lp = torch.zeros(1, 2)
    with pytest.raises(NotImplementedError):
        kl_penalty(lp, lp, "full")
    with pytest.raises(ValueError, match="low_var_kl"):
        kl_penalty(lp, lp, "k4")


def test_bf16_inputs_give_fp32() -> None:
    out = kl_penalty(torch.zeros(2, 3, dtype=torch.bfloat16), torch.ones(2, 3, dtype=torch.bfloat16), "k3+")
    assert out.dtype == torch.float32


def test_fixed_controller() -> None:
    controller = FixedKLController(0.05)
    controller.update(100.0, n_steps=512)
    assert controller.value == 0.05
    restored = FixedKLController(1.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == 0.05


def test_adaptive_controller_by_hand() -> None:
    controller = AdaptiveKLController(init_kl_coef=0.1, target_kl=6.0, horizon=10000)
    controller.update(12.0, n_steps=256)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    controller.update(torch.tensor(5.4), n_steps=100)  # error 5.4 / 6 - 1 = -0.1
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000) * (1 - 0.1 * 100 / 10000))
    resumed = AdaptiveKLController(init_kl_coef=0.1, target_kl=6.0, horizon=10000)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.value == controller.value
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, 6.0, 0)


def test_make_kl_controller() -> None:
    assert isinstance(make_kl_controller("fixed", 0.1), FixedKLController)
    assert isinstance(make_kl_controller("adaptive", 0.1, target_kl=6.0, horizon=100), AdaptiveKLController)
    with pytest.raises(ValueError):
        make_kl_controller("adaptive", 0.1)
    with pytest.raises(ValueError):
        make_kl_controller("pid", 0.1)


def test_apply_kl_penalty_by_hand() -> None:
    scores = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    old = torch.tensor([[-1.0, -1.0], [-2.0, float("nan")]])  # nan in padding must not leak
    ref = torch.tensor([[-2.0, -1.0], [-1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    rewards, current_kl = apply_kl_penalty(scores, old, ref, mask, kl_coef=0.5, kl_penalty="kl")
    # kld = old - ref = (1, 0) and (-1, masked).
    assert rewards.tolist() == [[-0.5, 1.0], [2.5, 0.0]]
    assert current_kl.item() == pytest.approx((0.5 + -1.0) / 2)
