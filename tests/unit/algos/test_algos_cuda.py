"""rlkit.algos on CUDA: every estimator, loss and helper gives the CPU numbers, in fp32 and bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlkit.algos import (
    advantage_estimators,
    agg_loss,
    apply_kl_penalty,
    compute_rollout_correction_and_rejection_mask,
    compute_sppo_loss,
    compute_value_loss,
    entropy_from_logits,
    policy_losses,
    sppo_advantages,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BS, LENGTH = 16, 12


def inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, LENGTH + 1, (BS,), generator=generator)
    mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).float()
    old = -torch.rand(BS, LENGTH, generator=generator) * 4
    return {
        "rewards": torch.randint(0, 3, (BS, LENGTH), generator=generator).float().to(dtype),
        "values": torch.randn(BS, LENGTH, generator=generator).to(dtype),
        "old": old.to(dtype),
        "new": (old + torch.randn(BS, LENGTH, generator=generator) * 0.3).to(dtype),
        "adv": torch.randn(BS, LENGTH, generator=generator).to(dtype),
        "mask": mask,
        "baselines": torch.randn(BS, generator=generator).to(dtype),
    }


def on(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(advantage_estimators))
def test_estimators_match_cpu(name: str, dtype: torch.dtype) -> None:
    index = np.array([f"uid-{i // 4}" for i in range(BS)], dtype=object)
    results = []
    for device in ("cpu", "cuda"):
        b = on(inputs(dtype), device)
        adv, ret = advantage_estimators[name](
            token_level_rewards=b["rewards"],
            response_mask=b["mask"],
            index=index,
            values=b["values"],
            reward_baselines=b["baselines"],
            gamma=0.99,
            lam=0.95,
            old_log_probs=b["old"],
            sum_pi_squared=torch.exp(b["old"].float()) ** 2,
        )
        assert adv.device.type == device and adv.dtype == torch.float32
        results.append((adv.cpu(), ret.cpu()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-4)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", sorted(policy_losses))
def test_policy_losses_match_cpu(mode: str, dtype: torch.dtype) -> None:
    results = []
    for device in ("cpu", "cuda"):
        b = on(inputs(dtype), device)
        new = b["new"].clone().requires_grad_(True)
        loss, metrics = policy_losses[mode](
            # clip_cov picks tokens at random among its candidates: a band no token falls in keeps the
            # comparison deterministic across devices
            b["old"],
            new,
            b["adv"],
            b["mask"],
            rollout_is="token",
            clip_cov_ratio=0.0,
            clip_cov_lb=1e9,
            clip_cov_ub=2e9,
        )
        loss.backward()
        assert new.grad is not None and torch.isfinite(new.grad).all()
        results.append((loss.item(), new.grad.float().cpu(), {k: float(v) for k, v in metrics.items()}))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-4, abs=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-4)


def test_helpers_match_cpu() -> None:
    outputs = []
    for device in ("cpu", "cuda"):
        b = on(inputs(torch.bfloat16), device)
        logits = (
            torch.randn(BS, LENGTH, 257, generator=torch.Generator().manual_seed(1)).bfloat16().to(device)
        )
        weights, mask, metrics = compute_rollout_correction_and_rejection_mask(
            b["new"],
            b["old"],
            b["mask"],
            rollout_is="sequence",
            rollout_rs="geometric",
            rollout_token_veto_threshold=1e-3,
        )
        assert weights is not None
        outputs.append(
            [
                agg_loss(b["adv"], b["mask"], "seq-mean-token-mean").cpu(),
                compute_value_loss(b["values"], b["adv"], b["values"] * 0.9, b["mask"], 0.5)[0].cpu(),
                apply_kl_penalty(b["rewards"], b["new"], b["old"], b["mask"], 0.1, "k3+")[0].cpu(),
                entropy_from_logits(logits, chunk_size=7).cpu(),
                weights.cpu(),
                mask.cpu(),
                metrics["rollout_corr/k3_kl"].cpu(),
                compute_sppo_loss(b["old"], b["new"], b["baselines"], b["mask"])[0].cpu(),
                sppo_advantages(b["baselines"], [i // 4 for i in range(BS)], beta=2.0).cpu(),
            ]
        )
    for cpu_value, cuda_value in zip(outputs[0], outputs[1], strict=True):
        assert torch.allclose(cpu_value.float(), cuda_value.float(), atol=1e-3, rtol=1e-3)
