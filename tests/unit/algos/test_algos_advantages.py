"""Advantage estimators (rlkit.algos.advantages): hand-worked numbers, properties, edge cases."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from rlkit.algos import advantage_estimators
from rlkit.errors import UserError

EPS = 1e-6


def outcome(scores: list[float], length: int = 3) -> torch.Tensor:
    """Token-level rewards with each response's score on its last token."""
    rewards = torch.zeros(len(scores), length)
    rewards[:, -1] = torch.tensor(scores)
    return rewards


def test_registry_names() -> None:
    assert set(advantage_estimators) == {
        "gae",
        "grpo",
        "rloo",
        "reinforce_plus_plus",
        "reinforce_plus_plus_baseline",
        "remax",
        "opo",
        "gpg",
        "grpo_passk",
        "sppo",
        "gdpo",
        "optimal_token_baseline",
    }


def test_every_estimator_accepts_one_common_keyword_set() -> None:
    torch.manual_seed(0)
    bs, length = 6, 5
    common = dict(
        token_level_rewards=torch.randn(bs, length),
        response_mask=torch.ones(bs, length),
        index=np.array(["p0", "p0", "p0", "p1", "p1", "p1"], dtype=object),
        values=torch.randn(bs, length),
        gamma=0.99,
        lam=0.95,
        epsilon=1e-6,
        norm_adv_by_std_in_grpo=True,
        reward_baselines=torch.randn(bs),
        config=None,  # verl passes its config object; rlkit ignores unknown keywords
        old_log_probs=-torch.rand(bs, length),
        sum_pi_squared=torch.rand(bs, length) * 0.5 + 0.1,
    )
    for name, estimator in advantage_estimators.items():
        advantages, returns = estimator(**common)
        assert advantages.shape == (bs, length) == returns.shape, name
        assert advantages.dtype == torch.float32, name
        assert torch.isfinite(advantages).all() and torch.isfinite(returns).all(), name


def test_grpo_by_hand_with_singleton_and_dr_grpo() -> None:
    rewards = outcome([1.0, 0.0, 2.0, 5.0, 8.0, 4.0])
    index = ["a", "a", "b", "b", "b", "c"]
    mask = torch.ones(6, 3)
    adv, returns = advantage_estimators["grpo"](token_level_rewards=rewards, response_mask=mask, index=index)
    std_a = math.sqrt(0.5)  # unbiased std of (1, 0)
    expected = [0.5 / (std_a + EPS), -0.5 / (std_a + EPS), -3 / (3 + EPS), 0.0, 3 / (3 + EPS), 4 / (1 + EPS)]
    assert adv[:, 0].tolist() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(adv, returns)
    dr_adv, _ = advantage_estimators["grpo"](
        token_level_rewards=rewards, response_mask=mask, index=index, norm_adv_by_std_in_grpo=False
    )
    assert dr_adv[:, 1].tolist() == pytest.approx([0.5, -0.5, -3.0, 0.0, 3.0, 4.0])


def test_grpo_properties_random_groups() -> None:
    torch.manual_seed(1)
    scores = torch.randn(12)
    index = [i // 4 for i in range(12)]
    mask = (torch.rand(12, 7) > 0.3).float()
    mask[:, 0] = 1.0
    adv, _ = advantage_estimators["grpo"](
        token_level_rewards=outcome(scores.tolist(), 7), response_mask=mask, index=index
    )
    per_response = adv[:, 0]
    for group in range(3):
        assert per_response[group * 4 : group * 4 + 4].sum().item() == pytest.approx(0.0, abs=1e-5)
    assert torch.all(adv[mask == 0] == 0)


def test_grpo_ties_give_zero_and_empty_rows_stay_zero() -> None:
    rewards = outcome([1.0, 1.0, 1.0, 0.0, 3.0])
    mask = torch.ones(5, 3)
    mask[4] = 0.0  # a response with no valid token
    adv, _ = advantage_estimators["grpo"](
        token_level_rewards=rewards, response_mask=mask, index=[0, 0, 0, 1, 1]
    )
    assert adv[:3].abs().max().item() == 0.0
    assert adv[4].abs().max().item() == 0.0
    assert torch.isfinite(adv).all()


def test_grpo_passk_by_hand() -> None:
    rewards = outcome([1.0, 0.0, 3.0, 2.0, 2.0])
    mask = torch.ones(5, 3)
    adv, _ = advantage_estimators["grpo_passk"](
        token_level_rewards=rewards, response_mask=mask, index=list("aaabb")
    )
    std_a = math.sqrt(7.0 / 3.0)  # unbiased std of (1, 0, 3)
    assert adv[:, 0].tolist() == pytest.approx([0.0, 0.0, 2.0 / (std_a + EPS), 0.0, 0.0], rel=1e-6)
    raw, _ = advantage_estimators["grpo_passk"](
        token_level_rewards=rewards, response_mask=mask, index=list("aaabb"), norm_adv_by_std_in_grpo=False
    )
    assert raw[:, 0].tolist() == [0.0, 0.0, 2.0, 0.0, 0.0]


def test_grpo_passk_singleton_is_a_user_error() -> None:
    with pytest.raises(UserError, match="rollout.n"):
        advantage_estimators["grpo_passk"](
            token_level_rewards=outcome([1.0, 0.0, 3.0]),
            response_mask=torch.ones(3, 3),
            index=["a", "a", "b"],
        )


def test_rloo_by_hand() -> None:
    rewards = outcome([1.0, 0.0, 2.0, 7.0])
    adv, _ = advantage_estimators["rloo"](
        token_level_rewards=rewards, response_mask=torch.ones(4, 3), index="xxxy"
    )
    # s_i minus the mean of the others: 1 - 1, 0 - 1.5, 2 - 0.5; a singleton keeps its score.
    assert adv[:, 2].tolist() == pytest.approx([0.0, -1.5, 1.5, 7.0])


def test_opo_length_weighted_baseline_by_hand() -> None:
    rewards = outcome([1.0, 0.0, 5.0], length=4)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    adv, _ = advantage_estimators["opo"](token_level_rewards=rewards, response_mask=mask, index=[0, 0, 1])
    # Baseline (2 * 1 + 4 * 0) / 6 = 1/3; a singleton has baseline 0.
    assert adv[0].tolist() == pytest.approx([2 / 3, 2 / 3, 0.0, 0.0])
    assert adv[1].tolist() == pytest.approx([-1 / 3] * 4)
    assert adv[2].tolist() == pytest.approx([5.0, 0.0, 0.0, 0.0])


def test_gpg_by_hand() -> None:
    rewards = outcome([1.0, 0.0, 1.0, 1.0])
    adv, _ = advantage_estimators["gpg"](
        token_level_rewards=rewards, response_mask=torch.ones(4, 3), index="aabb"
    )
    alpha = 4 / 3  # batch size / responses with a non-zero score
    assert adv[:, 0].tolist() == pytest.approx([alpha * 0.5, -alpha * 0.5, 0.0, 0.0])
    halved, _ = advantage_estimators["gpg"](
        token_level_rewards=rewards, response_mask=torch.ones(4, 3), index="aabb", f_norm=2.0
    )
    assert halved[:, 0].tolist() == pytest.approx([alpha * 0.25, -alpha * 0.25, 0.0, 0.0])


def test_reinforce_plus_plus_returns_reset_after_eos_and_whitened() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0], [0.0, 0.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv, returns = advantage_estimators["reinforce_plus_plus"](
        token_level_rewards=rewards, response_mask=mask, gamma=0.5
    )
    # Rewards after a response's end never flow back into it.
    assert returns[0].tolist() == pytest.approx([0.25, 0.5, 1.0])
    assert returns[1, :2].tolist() == pytest.approx([1.0, 2.0])
    assert returns[2, 0].item() == 0.0
    valid = [0.25, 0.5, 1.0, 1.0, 2.0, 0.0]
    mean, std = statistics.mean(valid), math.sqrt(statistics.variance(valid) + 1e-8)
    assert adv[0, 0].item() == pytest.approx((0.25 - mean) / std, rel=1e-5)
    assert adv[1, 1].item() == pytest.approx((2.0 - mean) / std, rel=1e-5)
    assert adv[1, 2].item() == 0.0 and adv[2, 1].item() == 0.0


def test_reinforce_plus_plus_baseline_by_hand() -> None:
    rewards = outcome([1.0, 3.0, 2.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    adv, _ = advantage_estimators["reinforce_plus_plus_baseline"](
        token_level_rewards=rewards, response_mask=mask, index=["a", "a", "b"]
    )
    valid = [-1.0, -1.0, 1.0, 2.0, 2.0, 2.0]  # centred scores on each valid token (singleton mean 0)
    mean, std = statistics.mean(valid), math.sqrt(statistics.variance(valid) + 1e-8)
    assert adv[0, 0].item() == pytest.approx((-1.0 - mean) / std, rel=1e-5)
    assert adv[2, 2].item() == pytest.approx((2.0 - mean) / std, rel=1e-5)
    assert adv[0, 2].item() == 0.0 and adv[1, 1].item() == 0.0


def test_remax_by_hand() -> None:
    rewards = torch.tensor([[0.0, 1.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, returns = advantage_estimators["remax"](
        token_level_rewards=rewards, response_mask=mask, reward_baselines=torch.tensor([0.5])
    )
    assert returns.tolist() == [[1.0, 1.0, 0.0]]
    assert adv.tolist() == [[0.5, 0.5, 0.0]]
    with pytest.raises(ValueError, match="reward_baselines"):
        advantage_estimators["remax"](token_level_rewards=rewards, response_mask=mask)


def test_gae_by_hand() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.3, 0.3]])
    mask = torch.ones(2, 3)
    adv, returns = advantage_estimators["gae"](
        token_level_rewards=rewards, values=values, response_mask=mask, gamma=0.9, lam=0.5
    )
    # Row 0 backwards: delta_2 = 0.9, A_2 = 0.9; delta_1 = 0.09 - 0.2, A_1 = -0.11 + 0.45 * 0.9 = 0.295;
    # delta_0 = 0.18 - 0.5, A_0 = -0.32 + 0.45 * 0.295 = -0.18725.
    raw_row0 = [-0.18725, 0.295, 0.9]
    # Row 1: delta_2 = -0.3, A_2 = -0.3; delta_1 = 0.27 - 0.3, A_1 = -0.03 - 0.135 = -0.165;
    # delta_0 = -0.03, A_0 = -0.03 + 0.45 * -0.165 = -0.10425.
    raw_row1 = [-0.10425, -0.165, -0.3]
    assert returns[0].tolist() == pytest.approx(
        [a + v for a, v in zip(raw_row0, [0.5, 0.2, 0.1], strict=True)], abs=1e-6
    )
    assert returns[1].tolist() == pytest.approx([a + 0.3 for a in raw_row1], abs=1e-6)
    everything = raw_row0 + raw_row1
    mean, std = statistics.mean(everything), math.sqrt(statistics.variance(everything) + 1e-8)
    assert adv.flatten().tolist() == pytest.approx([(a - mean) / std for a in everything], rel=1e-4)


def test_gae_values_at_mask_holes_do_not_matter() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])  # row 0: an observation token in the middle
    base = torch.tensor([[0.5, 0.0, 0.1], [0.2, 0.4, 0.0]])
    results = []
    for hole_value in (100.0, -7.0):
        values = base.clone()
        values[0, 1] = hole_value
        values[1, 2] = -hole_value
        results.append(
            advantage_estimators["gae"](
                token_level_rewards=rewards, values=values, response_mask=mask, gamma=1.0, lam=1.0
            )
        )
    (adv_a, ret_a), (adv_b, ret_b) = results
    assert torch.equal(adv_a, adv_b)
    assert torch.equal(ret_a[mask > 0], ret_b[mask > 0])
    # Row 0, gamma = lam = 1: A_2 = 1 - 0.1 = 0.9; the hole carries V_next = 0.1 and A = 0.9 back;
    # A_0 = 0 + 0.1 - 0.5 + 0.9 = 0.5; returns are A + V.
    assert ret_a[0, 0].item() == pytest.approx(1.0) and ret_a[0, 2].item() == pytest.approx(1.0)


def test_gae_all_masked_row_is_harmless() -> None:
    rewards = torch.tensor([[0.0, 1.0], [5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    adv, returns = advantage_estimators["gae"](
        token_level_rewards=rewards, values=torch.zeros(2, 2), response_mask=mask
    )
    assert torch.isfinite(adv).all() and torch.isfinite(returns).all()
    assert adv[1].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("name", sorted(advantage_estimators))
def test_bf16_inputs_match_fp32(name: str) -> None:
    torch.manual_seed(2)
    rewards = torch.randint(0, 3, (8, 6)).float()
    kwargs = dict(
        response_mask=torch.ones(8, 6),
        index=[i // 4 for i in range(8)],
        values=torch.randn(8, 6),
        reward_baselines=torch.randn(8),
        gamma=1.0,
        lam=1.0,
        old_log_probs=-torch.rand(8, 6),
        sum_pi_squared=torch.rand(8, 6) * 0.5,
    )
    fp32, _ = advantage_estimators[name](token_level_rewards=rewards, **kwargs)
    bf16, _ = advantage_estimators[name](
        token_level_rewards=rewards.bfloat16(), **{**kwargs, "values": kwargs["values"].bfloat16()}
    )
    assert bf16.dtype == torch.float32
    assert torch.allclose(fp32, bf16, atol=5e-2)
