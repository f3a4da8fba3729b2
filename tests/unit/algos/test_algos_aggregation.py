"""agg_loss (rlkit.algos.aggregation): each mode by hand, masking, and micro-batch/worker invariance."""

from __future__ import annotations

import pytest
import torch

from rlkit.algos import LOSS_AGG_MODES, agg_loss

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [9.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # last row: no valid token


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 7.0 / 3.0),  # (1 + 2 + 4) / 3 tokens
        ("token-sum", 7.0),  # 1 + 2 + 4
        ("seq-mean-token-sum", 3.5),  # (3 + 4) / 2 non-empty sequences
        ("seq-mean-token-mean", 2.75),  # (1.5 + 4) / 2
        ("seq-mean-token-sum-norm", 7.0 / 3.0),  # 7 / L with L = 3
    ],
)
def test_modes_by_hand(mode: str, expected: float) -> None:
    assert agg_loss(LOSS, MASK, mode).item() == pytest.approx(expected)


def test_global_arguments_by_hand() -> None:
    assert agg_loss(LOSS, MASK, "token-mean", batch_num_tokens=14).item() == pytest.approx(0.5)
    assert agg_loss(LOSS, MASK, "token-mean", dp_size=2, batch_num_tokens=14).item() == pytest.approx(1.0)
    assert agg_loss(LOSS, MASK, "seq-mean-token-sum", global_batch_size=7).item() == pytest.approx(1.0)
    assert agg_loss(LOSS, MASK, "seq-mean-token-mean", global_batch_size=11).item() == pytest.approx(0.5)
    assert agg_loss(LOSS, MASK, "seq-mean-token-sum-norm", loss_scale_factor=14).item() == pytest.approx(0.5)
    assert agg_loss(LOSS, MASK, "seq-mean-token-sum-norm", dp_size=2, loss_scale_factor=14).item() == 1.0
    assert agg_loss(LOSS, MASK, "token-sum", dp_size=2, batch_num_tokens=14).item() == 14.0  # 7 * dp_size
    assert agg_loss(LOSS, MASK, "token-mean", batch_num_tokens=torch.tensor(14.0)).item() == pytest.approx(
        0.5
    )


def test_unknown_mode_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm"):
        agg_loss(LOSS, MASK, "token-total")


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_all_masked_gives_zero(mode: str) -> None:
    assert agg_loss(LOSS, torch.zeros_like(MASK), mode).item() == 0.0


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_masked_tokens_get_no_gradient_even_when_inf(mode: str) -> None:
    loss_mat = LOSS.clone().requires_grad_(True)
    poisoned = loss_mat + torch.where(MASK > 0, 0.0, float("inf"))
    value = agg_loss(poisoned, MASK, mode)
    value.backward()
    assert torch.isfinite(value)
    assert loss_mat.grad is not None
    assert torch.all(loss_mat.grad[MASK == 0] == 0)
    assert torch.all(loss_mat.grad[MASK > 0] != 0)


def random_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    loss_mat = torch.randn(8, 5, generator=generator)
    lengths = torch.tensor([5, 1, 0, 3, 4, 2, 5, 0])  # includes empty rows
    mask = (torch.arange(5)[None, :] < lengths[:, None]).float()
    return loss_mat, mask


def global_args(mask: torch.Tensor, dp_size: int) -> dict[str, object]:
    return {
        "dp_size": dp_size,
        "batch_num_tokens": mask.sum(),
        "global_batch_size": (mask.sum(-1) > 0).sum(),
        "loss_scale_factor": mask.shape[-1],
    }


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_sum_of_micro_batches_equals_whole_batch(mode: str) -> None:
    loss_mat, mask = random_batch(0)
    whole = agg_loss(loss_mat, mask, mode)
    kwargs = global_args(mask, dp_size=1)
    for sizes in ([8], [4, 4], [3, 1, 4], [1] * 8):
        parts = zip(loss_mat.split(sizes), mask.split(sizes), strict=True)
        total = sum(agg_loss(lm, m, mode, **kwargs) for lm, m in parts)
        assert float(total) == pytest.approx(whole.item(), rel=1e-5), sizes


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("dp_size", [2, 4])
def test_workers_times_micro_batches_equal_whole_batch_with_gradients(mode: str, dp_size: int) -> None:
    loss_mat, mask = random_batch(1)
    whole_input = loss_mat.clone().requires_grad_(True)
    whole = agg_loss(whole_input, mask, mode)
    whole.backward()

    split_input = loss_mat.clone().requires_grad_(True)
    kwargs = global_args(mask, dp_size)
    per_worker = []
    for worker_loss, worker_mask in zip(split_input.chunk(dp_size), mask.chunk(dp_size), strict=True):
        micro = zip(worker_loss.split(1), worker_mask.split(1), strict=True)
        per_worker.append(sum(agg_loss(lm, m, mode, **kwargs) for lm, m in micro))
    # FSDP averages gradients over data-parallel workers.
    averaged = torch.stack(per_worker).mean()
    averaged.backward()
    assert averaged.item() == pytest.approx(whole.item(), rel=1e-5)
    assert whole_input.grad is not None and split_input.grad is not None
    assert torch.allclose(whole_input.grad, split_input.grad, atol=1e-6)


def test_bf16_loss_matrix_is_aggregated_in_fp32() -> None:
    value = agg_loss(LOSS.bfloat16(), MASK, "token-mean")
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(7.0 / 3.0)
