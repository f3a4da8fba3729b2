"""The algorithms verl added in 2026 (GDPO, DPPO, OTB, IcePop, token-sum): by hand, invariants, and verl.

The ``_verl_*`` functions are loop-by-loop restatements of verl's code (``core_algos.py``:
``compute_gdpo_outcome_advantage``, ``compute_policy_loss_dppo_tv``/``_kl``,
``compute_optimal_token_baseline_advantage``; ``rollout_corr_helper.compute_rollout_correction_weights``)
in plain torch, without verl installed; rlkit's vectorised versions must give the same numbers on the
same random inputs.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from rlkit.algos import (
    advantage_estimators,
    compute_rollout_correction_and_rejection_mask,
    compute_rollout_correction_weights,
    policy_losses,
)
from rlkit.algos.rollout_correction import parse_rollout_is_threshold
from rlkit.errors import UserError

# ----------------------------------------------------------------------------- verl references


def _verl_grpo(scores: torch.Tensor, index: list[str], mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, uid in enumerate(index):
        groups[uid].append(i)
    out = scores.clone()
    for rows in groups.values():
        values = scores[rows]
        mean, std = (values.mean(), values.std()) if len(rows) > 1 else (torch.tensor(0.0), torch.tensor(1.0))
        out[rows] = (values - mean) / (std + eps)
    return out.unsqueeze(-1) * mask


def _verl_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = (values * mask).sum() / mask.sum()
    var = (((values - mean) ** 2) * mask).sum() / mask.sum() * mask.sum() / (mask.sum() - 1)
    return (values - mean) * torch.rsqrt(var + 1e-8)


def _verl_gdpo(components: list[torch.Tensor], weights: list[float], index: list[str], mask: torch.Tensor):
    total = sum(w * _verl_grpo(c, index, mask) for w, c in zip(weights, components, strict=True))
    return _verl_whiten(total, mask) * mask


def _verl_dppo(old, new, adv, mask, kind: str, low: float, high: float, c: float):
    ratio = torch.exp(torch.clamp(new - old, -20, 20))
    truncated = torch.clamp(ratio, max=c).detach()
    prob, old_prob = torch.exp(new), torch.exp(old)
    if kind == "tv":
        keep = torch.where(adv > 0, (prob - old_prob) <= high, (prob - old_prob) >= -low)
    else:
        bkl = old_prob * (old - new) + (1 - old_prob) * torch.log((1 - old_prob + 1e-8) / (1 - prob + 1e-8))
        keep = torch.where(adv > 0, (bkl <= high) | (prob <= old_prob), (bkl <= low) | (prob >= old_prob))
    losses = -adv * truncated * new * keep.float()
    return (losses * mask).sum() / mask.sum(), ((1 - keep.float()) * mask).sum() / mask.sum()


def _verl_otb(rewards, mask, index, old_log_probs, sum_pi_sq, is_weights=None, eps=1e-8):
    returns = (rewards * mask).flip(-1).cumsum(-1).flip(-1)
    w = 1 - 2 * torch.exp(old_log_probs) + sum_pi_sq
    if is_weights is not None:
        w = w * is_weights**2
    cumulative = (w * mask).cumsum(-1)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, uid in enumerate(index):
        groups[uid].append(i)
    baselines = torch.zeros_like(returns)
    for rows in groups.values():
        if len(rows) == 1:
            continue
        g_ret, g_w, g_m = returns[rows], cumulative[rows], mask[rows]
        baselines[rows] = ((g_ret * g_w * g_m).sum(0) / ((g_w * g_m).sum(0) + eps)).expand(len(rows), -1)
        lengths = g_m.sum(-1)
        ordered = torch.sort(lengths).values
        longest, second = int(ordered[-1]), int(ordered[-2])
        at_max = (lengths == longest).nonzero(as_tuple=True)[0]
        if at_max.numel() == 1 and longest > second:
            baselines[rows[int(at_max[0])], second:] = 0.0
    return (returns - baselines) * mask, returns


def _batch(seed: int, bs: int = 8, length: int = 6):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 3, 5, 1, 6, 2, 4, 6])[:bs]
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    old = -torch.rand(bs, length, generator=gen) * 2
    new = old + torch.randn(bs, length, generator=gen) * 0.4
    adv = torch.randn(bs, length, generator=gen)
    index = ["a", "a", "a", "b", "b", "c", "c", "d"][:bs]
    return gen, mask, old, new, adv, index


# ----------------------------------------------------------------------------- token-sum


def test_token_sum_is_invariant_to_micro_batches_and_workers() -> None:
    _, mask, _, _, adv, _ = _batch(0)
    whole = policy_losses["vanilla"](adv, adv, adv, mask, loss_agg_mode="token-sum")[0]
    parts = sum(
        policy_losses["vanilla"](adv[r], adv[r], adv[r], mask[r], loss_agg_mode="token-sum", dp_size=2)[0]
        for r in ([0, 1, 2, 3], [4, 5, 6, 7])
    )
    assert float(parts) / 2 == pytest.approx(whole.item(), rel=1e-6)  # FSDP averages the two workers


# ----------------------------------------------------------------------------- GDPO


def test_gdpo_matches_verl_on_random_inputs() -> None:
    gen, mask, *_, index = _batch(1)
    components = [torch.randint(0, 2, (8,), generator=gen).float(), torch.rand(8, generator=gen) * 5]
    ours, returns = advantage_estimators["gdpo"](
        token_level_rewards=torch.zeros_like(mask),
        response_mask=mask,
        index=np.array(index, dtype=object),
        reward_components={"acc": components[0], "fmt": components[1]},
        reward_weights=[1.0, 0.5],
    )
    expected = _verl_gdpo(components, [1.0, 0.5], index, mask)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert torch.equal(ours, returns)


def test_gdpo_is_invariant_to_shifting_and_scaling_one_component() -> None:
    gen, mask, *_ = _batch(2)
    index = ["a", "a", "a", "b", "b", "c", "c", "c"]  # no group of one (its score is its advantage)
    acc, fmt = torch.rand(8, generator=gen), torch.rand(8, generator=gen)

    def run(second: torch.Tensor) -> torch.Tensor:
        return advantage_estimators["gdpo"](
            token_level_rewards=torch.zeros_like(mask),
            response_mask=mask,
            index=index,
            reward_components=[acc, second],
        )[0]

    # a per-group shift of a component and a positive rescale of it leave the advantages unchanged
    shift = torch.tensor([3.0, 3.0, 3.0, -1.0, -1.0, 7.0, 7.0, 7.0])
    assert torch.allclose(run(fmt), run(fmt * 1000.0 + shift), atol=1e-3)


def test_gdpo_without_components_is_whitened_grpo_and_masked_tokens_do_not_matter() -> None:
    gen, mask, *_, index = _batch(3)
    rewards = torch.randn(8, 6, generator=gen)
    poisoned = torch.where(mask > 0, rewards, torch.full_like(rewards, float("nan")))
    ours, _ = advantage_estimators["gdpo"](token_level_rewards=rewards, response_mask=mask, index=index)
    expected = _verl_whiten(_verl_grpo(rewards.sum(-1), index, mask), mask) * mask
    assert torch.allclose(ours, expected, atol=1e-5)
    components = [torch.where(mask > 0, rewards, 0.0).sum(-1)]
    again, _ = advantage_estimators["gdpo"](
        token_level_rewards=poisoned, response_mask=mask, index=index, reward_components=components
    )
    assert torch.all(again[mask == 0] == 0) and torch.isfinite(again).all()


def test_gdpo_weights_must_match_components() -> None:
    mask = torch.ones(2, 2)
    with pytest.raises(UserError, match="2 reward components but 1 weights"):
        advantage_estimators["gdpo"](
            token_level_rewards=mask,
            response_mask=mask,
            index=[0, 0],
            reward_components=[torch.ones(2), torch.zeros(2)],
            reward_weights=[1.0],
        )


# ----------------------------------------------------------------------------- DPPO


@pytest.mark.parametrize(
    ("mode", "kind", "low", "high"), [("dppo_tv", "tv", 0.15, 0.15), ("dppo_kl", "kl", 0.05, 0.05)]
)
def test_dppo_matches_verl_on_random_inputs(mode: str, kind: str, low: float, high: float) -> None:
    _, mask, old, new, adv, _ = _batch(4)
    new = old + torch.randn_like(old) * 1.5  # large moves, so some tokens leave the trust region
    leaf = new.clone().requires_grad_(True)
    loss, metrics = policy_losses[mode](old, leaf, adv, mask, clip_ratio_low=low, clip_ratio_high=high)
    ref_leaf = new.clone().requires_grad_(True)
    ref_loss, ref_clipfrac = _verl_dppo(old, ref_leaf, adv, mask, kind, low, high, 3.0)
    loss.backward()
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert metrics["actor/pg_clipfrac"].item() == pytest.approx(ref_clipfrac.item(), abs=1e-6)
    assert 0.0 < metrics["actor/pg_clipfrac"].item() < 1.0
    assert leaf.grad is not None and ref_leaf.grad is not None
    assert torch.allclose(leaf.grad * mask, ref_leaf.grad * mask, atol=1e-6)


def test_dppo_tv_by_hand() -> None:
    # p_old = 0.5 everywhere; p moves to 0.9 (A > 0: +0.4 > 0.15, masked), 0.6 (kept), 0.1 (A < 0: -0.4 masked)
    old = torch.full((1, 3), math.log(0.5))
    new = torch.log(torch.tensor([[0.9, 0.6, 0.1]])).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, metrics = policy_losses["dppo_tv"](
        old, new, adv, torch.ones(1, 3), clip_ratio_low=0.15, clip_ratio_high=0.15
    )
    assert loss.item() == pytest.approx(-1.0 * 1.2 * math.log(0.6) / 3, rel=1e-6)
    assert metrics["actor/pg_clipfrac"].item() == pytest.approx(2 / 3)
    loss.backward()
    assert new.grad is not None
    assert new.grad[0].tolist() == pytest.approx([0.0, -1.2 / 3, 0.0])


# ----------------------------------------------------------------------------- OTB


def _otb_inputs(seed: int):
    gen, mask, old, _, _, index = _batch(seed)
    rewards = torch.zeros_like(mask)
    last = (mask.sum(-1) - 1).clamp(min=0).long()
    rewards[torch.arange(8), last] = torch.randint(0, 2, (8,), generator=gen).float()
    probs = torch.softmax(torch.randn(8, 6, 5, generator=gen), -1)
    return mask, index, rewards, old, (probs**2).sum(-1), torch.rand(8, 6, generator=gen) + 0.5


@pytest.mark.parametrize("with_is", [False, True])
def test_otb_matches_verl_on_random_inputs(with_is: bool) -> None:
    mask, index, rewards, old, sum_sq, is_w = _otb_inputs(5)
    weights = is_w if with_is else None
    ours, returns = advantage_estimators["optimal_token_baseline"](
        token_level_rewards=rewards,
        response_mask=mask,
        index=index,
        old_log_probs=old,
        sum_pi_squared=sum_sq,
        rollout_is_weights=weights,
    )
    expected, expected_returns = _verl_otb(rewards, mask, index, old, sum_sq, weights)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert torch.allclose(returns, expected_returns)


def test_otb_single_response_group_keeps_its_return_and_masked_positions_do_not_matter() -> None:
    mask, index, rewards, old, sum_sq, _ = _otb_inputs(6)
    keywords = dict(response_mask=mask, index=index)
    clean, returns = advantage_estimators["optimal_token_baseline"](
        token_level_rewards=rewards, old_log_probs=old, sum_pi_squared=sum_sq, **keywords
    )
    nan = torch.full_like(old, float("nan"))
    dirty, _ = advantage_estimators["optimal_token_baseline"](
        token_level_rewards=torch.where(mask > 0, rewards, nan),
        old_log_probs=torch.where(mask > 0, old, nan),
        sum_pi_squared=torch.where(mask > 0, sum_sq, nan),
        **keywords,
    )
    assert torch.equal(clean, dirty)
    assert torch.equal(clean[7], returns[7])  # "d" is a group of one: no baseline


def test_otb_equal_paths_give_the_group_mean_baseline() -> None:
    # identical per-token variance on every path: B_t is the mean return of the group at t
    mask = torch.ones(3, 2)
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 2.0]])
    adv, _ = advantage_estimators["optimal_token_baseline"](
        token_level_rewards=rewards,
        response_mask=mask,
        index=[0, 0, 0],
        old_log_probs=torch.full((3, 2), math.log(0.5)),
        sum_pi_squared=torch.full((3, 2), 0.5),
    )
    assert torch.allclose(adv, torch.tensor([[0.0, 0.0], [-1.0, -1.0], [1.0, 1.0]]), atol=1e-6)


# ----------------------------------------------------------------------------- IcePop


def test_icepop_zeroes_weights_outside_the_bounds() -> None:
    log_ratio = torch.log(torch.tensor([[0.3, 0.9, 1.5, 6.0]]))
    mask = torch.ones(1, 4)
    weights, metrics = compute_rollout_correction_weights(log_ratio, mask, "token", "0.5_5.0")
    assert torch.allclose(weights, torch.tensor([[0.0, 0.9, 1.5, 0.0]]))
    assert metrics["rollout_is_oob_ratio"].item() == pytest.approx(0.5)
    same, _ = compute_rollout_correction_weights(
        log_ratio, mask, "token", 5.0, rollout_is_threshold_lower=0.5
    )
    assert torch.equal(same, weights)
    tis, _ = compute_rollout_correction_weights(log_ratio, mask, "token", 5.0)
    assert torch.allclose(tis, torch.tensor([[0.3, 0.9, 1.5, 5.0]]))  # TIS truncates instead


def test_icepop_matches_verl_and_ignores_masked_positions() -> None:
    gen, mask, old, new, *_ = _batch(7)
    rollout = old + torch.randn(old.shape, generator=gen) * 0.8
    weights, _, metrics = compute_rollout_correction_and_rejection_mask(
        old, torch.where(mask > 0, rollout, torch.full_like(rollout, float("nan"))), mask, "token", "0.5_2.0"
    )
    raw = torch.exp(torch.clamp(old - rollout, -20, 20)) * mask
    expected = torch.where((raw >= 0.5) & (raw <= 2.0), raw, torch.zeros_like(raw))  # verl's IcePop
    assert weights is not None and torch.allclose(weights, expected, atol=1e-6)
    assert 0 < metrics["rollout_corr/rollout_is_oob_ratio"].item() < 1


@pytest.mark.parametrize("spec", ["abc", "2_1", "0_2", "1_2_3"])
def test_bad_icepop_bounds_are_rejected(spec: str) -> None:
    with pytest.raises(ValueError, match="rollout_is_threshold"):
        parse_rollout_is_threshold(spec)
