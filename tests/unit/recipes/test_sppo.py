"""SPPO's targets (algo.advantage=sppo) and loss (actor.loss_mode=sppo) on hand-made batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlkit.algos import advantage_estimators, compute_sppo_loss, policy_losses
from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config


def outcome(scores: list[float], lengths: list[int], width: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rewards with each score on the response's last token, and the response mask."""
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()
    rewards = torch.zeros(len(scores), width)
    rewards[torch.arange(len(scores)), torch.tensor(lengths) - 1] = torch.tensor(scores)
    return rewards, mask


def targets(
    scores: list[float], uids: list[str], beta: float, lengths: list[int] | None = None
) -> torch.Tensor:
    lengths = lengths or [2] * len(scores)
    rewards, mask = outcome(scores, lengths)
    adv, ret = advantage_estimators["sppo"](
        token_level_rewards=rewards,
        response_mask=mask,
        index=np.array(uids, dtype=object),
        sppo_beta=beta,
        gamma=1.0,  # keywords of other estimators are ignored
    )
    assert torch.equal(adv, ret)
    assert torch.equal(adv * (1 - mask), torch.zeros_like(adv))  # nothing outside the response
    return adv[:, 0]


def test_targets_are_centred_within_each_prompt() -> None:
    got = targets([1.0, 0.0, 0.0, 3.0, 5.0], ["a", "a", "a", "b", "b"], beta=0.0)
    assert got.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, -1.0, 1.0])


def test_targets_with_a_soft_mean() -> None:
    beta = 2.0
    scores = [1.0, 0.0, 0.5]
    softmean = math.log(sum(math.exp(beta * s) for s in scores) / 3) / beta
    got = targets(scores, ["a"] * 3, beta=beta)
    assert got.tolist() == pytest.approx([s - softmean for s in scores])
    # the soft mean sits above the mean: fewer responses get a positive target
    assert softmean > sum(scores) / 3


def test_binary_targets_are_twice_the_win_rate_minus_a_half() -> None:
    scores = [1.0, 0.0, 1.0, 1.0, 0.0]
    n = len(scores)
    win_rate = [sum(1.0 if s > t else 0.5 if s == t else 0.0 for t in scores) / n for s in scores]
    got = targets(scores, ["a"] * n, beta=0.0)
    assert got.tolist() == pytest.approx([2 * (p - 0.5) for p in win_rate])


def test_sppo_loss_mode_by_hand() -> None:
    # two responses: targets 0.5 and -0.5 on 2 and 1 tokens; log-ratios 0.3 and -0.1
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    advantages = torch.tensor([[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0]])
    old = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, 0.0, 0.0]])
    new = (old + torch.tensor([[0.1, 0.2, 9.0], [-0.1, 0.0, 9.0]])).requires_grad_(True)
    eta = 2.0
    loss, metrics = policy_losses["sppo"](
        old, new, advantages, mask, sppo_eta=eta, loss_agg_mode="token-mean"
    )
    expected = ((0.3 - eta * 0.5) ** 2 + (-0.1 + eta * 0.5) ** 2) / 2
    assert float(loss.detach()) == pytest.approx(expected)
    assert float(metrics["actor/log_ratio_mean"]) == pytest.approx(0.1)
    assert float(metrics["actor/preference_mean"]) == pytest.approx(0.0)
    reference, _, _ = compute_sppo_loss(old, new, torch.tensor([0.5, -0.5]), mask, eta=eta)
    assert float(loss.detach()) == pytest.approx(float(reference.detach()))
    loss.backward()
    assert new.grad is not None
    # d/dlogp_t of (Σ logp - Σ old - eta r)^2 / 2 = (Σ logp - Σ old - eta r) on every valid token
    torch.testing.assert_close(new.grad, torch.tensor([[-0.7, -0.7, 0.0], [0.9, 0.0, 0.0]]))


def test_sppo_loss_is_the_same_in_micro_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = (torch.arange(4)[None, :] < torch.tensor([4, 2, 3, 1])[:, None]).float()
    old = -torch.rand(4, 4, generator=gen)
    new = old + 0.1 * torch.randn(4, 4, generator=gen)
    advantages = torch.tensor([0.5, -0.5, 1.0, 0.0])[:, None] * mask
    whole, _ = policy_losses["sppo"](old, new, advantages, mask)
    parts = sum(
        policy_losses["sppo"](old[r], new[r], advantages[r], mask[r], global_batch_size=4)[0]
        for r in ([0, 1], [2, 3])
    )
    assert float(parts) == pytest.approx(float(whole))
    with pytest.raises(ValueError, match="rollout_is_weights"):
        policy_losses["sppo"](old, new, advantages, mask, rollout_is_weights=torch.ones_like(mask))


def test_recipe_config_is_sppo() -> None:
    cfg = to_dataclass(load_config("sppo"))
    assert cfg.algo.advantage == "sppo" and cfg.actor.loss_mode == "sppo"
    assert (cfg.algo.sppo_beta, cfg.actor.sppo_eta) == (1.0, 1.0)
    assert cfg.hooks is None and not cfg.actor.use_kl_loss
    assert cfg.data.batch_size // cfg.actor.mini_batch_size > 1  # several regression steps per batch
