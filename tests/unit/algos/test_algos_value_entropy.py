"""Value loss (rlkit.algos.value) and chunked entropy (rlkit.algos.entropy)."""

from __future__ import annotations

import math

import pytest
import torch

import rlkit.algos.entropy as entropy_module
from rlkit.algos import compute_entropy_loss, compute_value_loss, entropy_from_logits


def test_value_loss_by_hand() -> None:
    vpreds = torch.tensor([[1.0, 0.0, 9.0]], requires_grad=True)
    values = torch.tensor([[0.5, 1.0, 0.0]])
    returns = torch.tensor([[0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipfrac = compute_value_loss(vpreds, returns, values, mask, cliprange_value=0.2)
    # Token 0: v_clip = 0.7, max(1, 0.49) = 1. Token 1: v_clip = 0.8, max(0, 0.64) = 0.64 (clipped).
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.64) / 2)
    assert clipfrac.item() == 0.5
    loss.backward()
    assert vpreds.grad is not None
    # d/dv of 0.5 * (v - R)**2 / 2 tokens at v = 1 is 0.5; the clipped token and the masked one get 0.
    assert vpreds.grad[0].tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_value_loss_passes_global_arguments() -> None:
    vpreds, returns, values = torch.ones(2, 2), torch.zeros(2, 2), torch.ones(2, 2)
    mask = torch.ones(2, 2)
    whole, _ = compute_value_loss(vpreds, returns, values, mask, 0.5)
    halves = [
        compute_value_loss(
            vpreds[i : i + 1], returns[i : i + 1], values[i : i + 1], mask[i : i + 1], 0.5, batch_num_tokens=4
        )[0]
        for i in range(2)
    ]
    assert float(sum(halves)) == pytest.approx(whole.item())  # type: ignore[arg-type]


def test_entropy_by_hand() -> None:
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), float("-inf"), float("-inf")]]])
    entropy = entropy_from_logits(logits)
    assert entropy.shape == (1, 2)
    assert entropy[0, 0].item() == pytest.approx(math.log(4.0))
    assert entropy[0, 1].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_entropy_matches_naive_value_and_gradient(chunk_size: int) -> None:
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 11) * 3).requires_grad_(True)
    upstream = torch.randn(3, 5)
    (entropy_from_logits(logits, chunk_size) * upstream).sum().backward()
    assert logits.grad is not None
    ours = logits.grad.clone()

    reference_logits = logits.detach().clone().requires_grad_(True)
    naive = torch.distributions.Categorical(logits=reference_logits).entropy()
    (naive * upstream).sum().backward()
    assert torch.allclose(entropy_from_logits(logits.detach(), chunk_size), naive.detach(), atol=1e-5)
    assert reference_logits.grad is not None
    assert torch.allclose(ours, reference_logits.grad, atol=1e-5)


def test_entropy_neg_inf_logits_have_finite_gradient() -> None:
    logits = torch.tensor([[0.0, 1.0, float("-inf")]], requires_grad=True)
    entropy_from_logits(logits).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[0, 2].item() == 0.0


def test_entropy_bf16_never_casts_more_than_a_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Size] = []
    original = entropy_module._chunk_stats

    def recording(chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen.append(chunk.shape)
        return original(chunk)

    monkeypatch.setattr(entropy_module, "_chunk_stats", recording)
    logits = torch.randn(4, 6, 32).bfloat16().requires_grad_(True)
    entropy = entropy_from_logits(logits, chunk_size=5)
    entropy.sum().backward()
    assert entropy.dtype == torch.float32
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
    assert seen and all(shape[0] <= 5 for shape in seen)  # forward and backward both chunked
    naive = torch.distributions.Categorical(logits=logits.detach().float()).entropy()
    assert torch.allclose(entropy.detach(), naive, atol=1e-4)


def test_entropy_loss_of_uniform_logits() -> None:
    logits = torch.zeros(2, 3, 8)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert compute_entropy_loss(logits, mask).item() == pytest.approx(math.log(8.0))
    with pytest.raises(ValueError):
        entropy_from_logits(logits, chunk_size=0)
