"""Policy losses (rlkit.algos.policy_losses): hand-worked numbers, masking, invariance, stability."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit.algos import LOSS_AGG_MODES, policy_losses

LN = math.log


def leaf(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values).requires_grad_(True)


def test_registry_names() -> None:
    assert set(policy_losses) == {
        "vanilla",
        "gspo",
        "sapo",
        "gpg",
        "clip_cov",
        "kl_cov",
        "geo_mean",
        "cispo",
        "reinforce",
        "sppo",
        "dppo_tv",
        "dppo_kl",
    }


def test_vanilla_clip_and_dual_clip_by_hand() -> None:
    old = torch.zeros(1, 4)
    new = leaf([[LN(1.5), LN(0.5), LN(0.5), LN(5.0)]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, metrics = policy_losses["vanilla"](old, new, adv, torch.ones(1, 4))
    # Per token: max(-1.5, -1.2) = -1.2 (clipped); max(-0.5, -0.8) = -0.5; max(0.5, 0.8) = 0.8 (clipped);
    # max(5, 1.2) = 5 > dual-clip bound 3, so 3.
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8 + 3.0) / 4)
    assert metrics["actor/pg_clipfrac"].item() == pytest.approx(0.5)
    assert metrics["actor/pg_clipfrac_lower"].item() == pytest.approx(0.25)
    assert metrics["actor/ppo_kl"].item() == pytest.approx(-(LN(1.5) + 2 * LN(0.5) + LN(5.0)) / 4, rel=1e-5)
    loss.backward()
    assert new.grad is not None
    # Only the unclipped token has a gradient: d(-A * exp(logp)) / dlogp / 4 = -0.5 / 4.
    assert new.grad[0].tolist() == pytest.approx([0.0, -0.125, 0.0, 0.0])


def test_vanilla_clip_higher_and_is_weights() -> None:
    old, new = torch.zeros(1, 2), torch.tensor([[LN(1.5), 0.0]])
    adv, mask = torch.ones(1, 2), torch.ones(1, 2)
    loss, _ = policy_losses["vanilla"](old, new, adv, mask, clip_ratio_high=0.28)
    assert loss.item() == pytest.approx((-1.28 - 1.0) / 2)
    weighted, _ = policy_losses["vanilla"](
        old, new, adv, mask, clip_ratio_high=0.28, rollout_is_weights=torch.tensor([[2.0, 0.5]])
    )
    assert weighted.item() == pytest.approx((-2.56 - 0.5) / 2)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        policy_losses["vanilla"](old, new, adv, mask, clip_ratio_c=1.0)


def test_gspo_sequence_ratio_by_hand() -> None:
    old, new = torch.zeros(1, 2), leaf([[LN(2.0), 0.0]])
    adv, mask = torch.ones(1, 2), torch.ones(1, 2)
    loss, metrics = policy_losses["gspo"](old, new, adv, mask)
    # s = exp((ln 2 + 0) / 2) = sqrt(2) > 1.2, so both tokens are clipped to -1.2.
    assert loss.item() == pytest.approx(-1.2)
    assert metrics["actor/pg_clipfrac"].item() == 1.0
    wide, _ = policy_losses["gspo"](old, new, adv, mask, clip_ratio_high=1.0)
    wide.backward()
    assert wide.item() == pytest.approx(-math.sqrt(2.0))
    assert new.grad is not None
    # Each token's ratio has value s and the gradient of its own log-prob: -A * s / 2 tokens.
    assert new.grad[0].tolist() == pytest.approx([-math.sqrt(2.0) / 2] * 2)


def test_gspo_and_sapo_force_seq_mean_token_mean() -> None:
    old, new = torch.zeros(2, 3), torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    gspo, _ = policy_losses["gspo"](old, new, adv, mask, loss_agg_mode="token-mean")
    assert gspo.item() == pytest.approx((-1.0 - 4.0) / 2)  # mean of per-sequence token means


def test_sapo_gate_by_hand() -> None:
    old, new = torch.zeros(1, 2), torch.zeros(1, 2)
    adv, mask = torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    loss, metrics = policy_losses["sapo"](old, new, adv, mask)
    # ratio 1: gate = sigmoid(0) * 4 / tau = 2 / tau, tau = 1 for A > 0 and 1.05 for A <= 0.
    assert loss.item() == pytest.approx((-2.0 + 2.0 / 1.05) / 2, rel=1e-5)
    assert metrics["actor/pg_clipfrac"].item() == 0.0
    custom, _ = policy_losses["sapo"](old, new, adv, mask, tau_pos=2.0, tau_neg=4.0)
    assert custom.item() == pytest.approx((-1.0 + 0.5) / 2)


def test_gpg_by_hand() -> None:
    new = leaf([[-1.0, -2.0]])
    loss, metrics = policy_losses["gpg"](
        torch.zeros(1, 2), new, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    )
    assert loss.item() == pytest.approx((1.0 - 2.0) / 2)
    assert metrics == {}
    loss.backward()
    assert new.grad is not None and new.grad[0].tolist() == [-0.5, 0.5]


def test_cispo_by_hand() -> None:
    new = leaf([[LN(1.5), LN(0.5), LN(1.0)]])
    adv = torch.tensor([[1.0, 1.0, 2.0]])
    loss, metrics = policy_losses["cispo"](torch.zeros(1, 3), new, adv, torch.ones(1, 3))
    expected = (-1.2 * LN(1.5) - 0.8 * LN(0.5) - 2.0 * 0.0) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["actor/pg_clipfrac"].item() == pytest.approx(2 / 3)
    loss.backward()
    assert new.grad is not None
    # The clipped ratio is a constant: every token keeps a gradient, -w * A / 3.
    assert new.grad[0].tolist() == pytest.approx([-1.2 / 3, -0.8 / 3, -2.0 / 3])


def test_geo_mean_by_hand() -> None:
    old, new = torch.zeros(1, 2), torch.tensor([[LN(1.5), LN(0.9)]])
    mask = torch.ones(1, 2)
    loss, metrics = policy_losses["geo_mean"](old, new, torch.ones(1, 2), mask)
    # A > 0: log-ratios clipped from above at 0.2: (0.2 + ln 0.9) / 2.
    assert loss.item() == pytest.approx(-math.exp((0.2 + LN(0.9)) / 2), rel=1e-5)
    assert metrics["actor/pg_clipfrac"].item() == 0.5
    assert metrics["actor/pg_clipfrac_lower"].item() == 0.0
    negative, metrics = policy_losses["geo_mean"](old, new, -torch.ones(1, 2), mask)
    # A < 0: min(-delta, -clamp(delta)) keeps ln 1.5 (the clip only bounds the other side).
    assert negative.item() == pytest.approx(math.sqrt(1.5 * 0.9), rel=1e-5)
    assert metrics["actor/pg_clipfrac_lower"].item() == 0.5


def test_kl_cov_penalises_top_covariance_tokens_by_hand() -> None:
    new = torch.tensor([[-1.0, -3.0, -2.5, -1.5]])
    delta = torch.tensor([[0.1, 0.2, -0.3, 0.4]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, metrics = policy_losses["kl_cov"](
        new - delta, new, adv, torch.ones(1, 4), kl_cov_ratio=0.5, ppo_kl_coef=2.0
    )
    # cov = (A - 0) * (logp + 2) = (1, -1, 0.5, -0.5): tokens 0 and 2 get 2 * |delta|.
    base = [-math.exp(0.1), -math.exp(0.2), math.exp(-0.3), math.exp(0.4)]
    assert loss.item() == pytest.approx((sum(base) + 2.0 * (0.1 + 0.3)) / 4, rel=1e-5)
    assert metrics["actor/ppo_kl"].item() == pytest.approx(1.0 / 4, rel=1e-5)


def test_clip_cov_detaches_high_covariance_token_by_hand() -> None:
    new = leaf([[-1.0, -3.0, -2.0, -2.0]])
    delta = torch.tensor([[0.0, LN(0.5), 0.0, 0.0]])
    adv = torch.tensor([[2.0, -2.0, 0.0, 0.0]])
    loss, metrics = policy_losses["clip_cov"](new.detach() - delta, new, adv, torch.ones(1, 4))
    # cov = (2, 2, 0, 0); token 1 is already clipped by PPO, so token 0 is the only candidate and is zeroed.
    # Token 1: max(-A * 0.5, -A * 0.8) = 1.6.
    assert loss.item() == pytest.approx(1.6 / 4)
    assert metrics["actor/pg_clipfrac"].item() == 0.25
    loss.backward()
    assert new.grad is not None and new.grad[0, 0].item() == 0.0


def test_clip_cov_random_pick_is_reproducible_with_a_generator() -> None:
    torch.manual_seed(3)
    new, adv = torch.randn(4, 16), torch.randn(4, 16) * 4
    picks = [
        policy_losses["clip_cov"](
            new, new, adv, torch.ones(4, 16), clip_cov_ratio=0.1, generator=torch.Generator().manual_seed(7)
        )[0]
        for _ in range(2)
    ]
    assert picks[0].item() == picks[1].item()


def test_reinforce_by_hand_with_and_without_rollout_is() -> None:
    rollout = torch.tensor([[-1.0, -1.0]])
    new = leaf([[-0.5, -2.0]])
    adv, mask = torch.tensor([[1.0, 2.0]]), torch.ones(1, 2)
    loss, metrics = policy_losses["reinforce"](rollout, new, adv, mask)
    assert loss.item() == pytest.approx((0.5 + 4.0) / 2)
    assert metrics["actor/ppo_kl"].item() == pytest.approx((-0.5 + 1.0) / 2)
    corrected, metrics = policy_losses["reinforce"](
        rollout, new, adv, mask, rollout_is="token", rollout_is_threshold=2.0
    )
    weights = [math.exp(0.5), math.exp(-1.0)]
    assert corrected.item() == pytest.approx((0.5 * weights[0] + 4.0 * weights[1]) / 2, rel=1e-5)
    assert "rollout_corr/rollout_is_mean" in metrics
    corrected.backward()
    assert new.grad is not None
    assert new.grad[0].tolist() == pytest.approx([-1.0 * weights[0] / 2, -2.0 * weights[1] / 2], rel=1e-5)


def test_reinforce_rejection_removes_tokens() -> None:
    rollout = torch.tensor([[-1.0, -1.0]])
    new = torch.tensor([[-1.0, 4.0]])  # the second token's ratio e^5 is far outside [1/2, 2]
    loss, metrics = policy_losses["reinforce"](
        rollout, new, torch.ones(1, 2), torch.ones(1, 2), rollout_rs="token", rollout_rs_threshold=2.0
    )
    assert loss.item() == pytest.approx(1.0)  # only the first token: -A * logp = 1
    assert metrics["rollout_corr/rollout_rs_masked_fraction"].item() == 0.5


# ---------------------------------------------------------------------------------------------------
# Properties over every mode.


def batch(seed: int, bs: int = 6, length: int = 5) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(bs, length, generator=generator) * 3
    new = old + torch.randn(bs, length, generator=generator) * 0.3
    adv = torch.randn(bs, length, generator=generator)
    lengths = torch.tensor([5, 3, 0, 1, 4, 2])[:bs]
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    mask[0, 2] = 0.0  # an interior hole (multi-turn observation token)
    return old, new, adv, mask


@pytest.mark.parametrize("mode", sorted(policy_losses))
def test_masked_tokens_never_contribute_to_loss_or_gradient(mode: str) -> None:
    old, new, adv, mask = batch(0)
    results = []
    for garbage in (float("nan"), float("-inf"), 1e4):
        poisoned_new = torch.where(mask > 0, new, torch.full_like(new, garbage)).requires_grad_(True)
        poisoned_old = torch.where(mask > 0, old, torch.full_like(old, -garbage))
        poisoned_adv = torch.where(mask > 0, adv, torch.full_like(adv, garbage))
        loss, metrics = policy_losses[mode](
            poisoned_old, poisoned_new, poisoned_adv, mask, clip_cov_ratio=0.2
        )
        loss.backward()
        assert poisoned_new.grad is not None
        assert torch.isfinite(loss), mode
        assert torch.all(poisoned_new.grad[mask == 0] == 0), mode
        assert torch.isfinite(poisoned_new.grad).all(), mode
        assert all(torch.isfinite(torch.as_tensor(value)) for value in metrics.values()), mode
        results.append((loss.detach(), poisoned_new.grad))
    if mode != "clip_cov":  # clip_cov picks its tokens at random
        assert all(torch.allclose(results[0][0], loss) for loss, _ in results)
        assert all(torch.allclose(results[0][1], grad) for _, grad in results)


@pytest.mark.parametrize("mode", sorted(policy_losses))
def test_clip_fractions_are_fractions(mode: str) -> None:
    old, new, adv, mask = batch(1)
    _, metrics = policy_losses[mode](old, new + torch.randn_like(new), adv, mask)
    for key in ("actor/pg_clipfrac", "actor/pg_clipfrac_lower"):
        if key in metrics:
            assert 0.0 <= metrics[key].item() <= 1.0, (mode, key)
            assert metrics[key].dim() == 0 and metrics[key].dtype == torch.float32


@pytest.mark.parametrize("mode", sorted(policy_losses))
@pytest.mark.parametrize("gap", [1e3, -1e3, 80.0, -80.0])
def test_extreme_log_prob_gaps_stay_finite(mode: str, gap: float) -> None:
    old, _, adv, mask = batch(2)
    new = (old + gap).requires_grad_(True)
    loss, metrics = policy_losses[mode](old, new, adv, mask, rollout_is="token")
    loss.backward()
    assert new.grad is not None
    assert torch.isfinite(loss) and torch.isfinite(new.grad).all(), mode
    assert all(torch.isfinite(torch.as_tensor(value)) for value in metrics.values()), mode


@pytest.mark.parametrize("mode", sorted(policy_losses))
def test_bf16_inputs(mode: str) -> None:
    old, new, adv, mask = batch(3)
    new_bf16 = new.bfloat16().requires_grad_(True)
    loss, _ = policy_losses[mode](old.bfloat16(), new_bf16, adv.bfloat16(), mask)
    reference, _ = policy_losses[mode](
        old.bfloat16().float(), new.bfloat16().float(), adv.bfloat16().float(), mask
    )
    loss.backward()
    assert loss.dtype == torch.float32
    assert new_bf16.grad is not None and new_bf16.grad.dtype == torch.bfloat16
    if mode != "clip_cov":
        assert loss.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)


INVARIANT_MODES = ["vanilla", "gspo", "sapo", "gpg", "geo_mean", "cispo", "reinforce", "dppo_tv", "dppo_kl"]


@pytest.mark.parametrize("mode", INVARIANT_MODES)
@pytest.mark.parametrize("agg", LOSS_AGG_MODES)
def test_micro_batches_with_global_arguments_sum_to_the_whole_batch(mode: str, agg: str) -> None:
    old, new, adv, mask = batch(4)
    weights = torch.rand_like(new) + 0.5
    whole_new = new.clone().requires_grad_(True)
    whole, _ = policy_losses[mode](old, whole_new, adv, mask, loss_agg_mode=agg, rollout_is_weights=weights)
    whole.backward()

    split_new = new.clone().requires_grad_(True)
    global_args = {
        "dp_size": 1,
        "batch_num_tokens": mask.sum(),
        "global_batch_size": (mask.sum(-1) > 0).sum(),
        "loss_scale_factor": mask.shape[-1],
    }
    total = torch.zeros(())
    for rows in ([0, 1], [2, 3, 4], [5]):
        loss, _ = policy_losses[mode](
            old[rows],
            split_new[rows],
            adv[rows],
            mask[rows],
            loss_agg_mode=agg,
            rollout_is_weights=weights[rows],
            **global_args,
        )
        total = total + loss
    total.backward()
    assert total.item() == pytest.approx(whole.item(), rel=1e-5, abs=1e-7)
    assert whole_new.grad is not None and split_new.grad is not None
    assert torch.allclose(whole_new.grad, split_new.grad, atol=1e-6)


def test_unused_mode_keywords_are_ignored() -> None:
    old, new, adv, mask = batch(5)
    plain, _ = policy_losses["vanilla"](old, new, adv, mask)
    extra, _ = policy_losses["vanilla"](
        old, new, adv, mask, tau_pos=3.0, clip_cov_ratio=0.5, kl_cov_ratio=0.1
    )
    assert plain.item() == extra.item()
