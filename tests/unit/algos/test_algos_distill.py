"""Distillation losses (rlkit.algos.distill): zero at the teacher, JSD limits, masking, invariance."""

from __future__ import annotations

import pytest
import torch

from rlkit.algos import LOSS_AGG_MODES, compute_distill_reverse_kl_advantage, compute_gkd_loss, gkd_divergence
from rlkit.algos.distill import with_tail


def _topk(seed: int, bs: int = 6, length: int = 5, vocab: int = 20, k: int = 4):
    """Full-vocab log-probs of a teacher and a student, the teacher's top-k ids, and a mask."""
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.log_softmax(torch.randn(bs, length, vocab, generator=gen) * 2, -1)
    student_logits = torch.randn(bs, length, vocab, generator=gen)
    ids = teacher.topk(k, -1).indices
    lengths = torch.tensor([5, 3, 0, 1, 4, 2])[:bs]
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    return teacher, student_logits, ids, mask


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_student_equal_to_teacher_has_zero_loss_and_zero_gradient(loss: str) -> None:
    teacher, _, ids, mask = _topk(0)
    logits = (teacher * 1.0).clone().requires_grad_(True)  # log-probs are valid logits of the same softmax
    student_topk = torch.log_softmax(logits, -1).gather(-1, ids)
    value, _ = compute_gkd_loss(student_topk, teacher.gather(-1, ids), mask, loss=loss)
    value.backward()
    assert abs(value.item()) < 1e-6
    assert logits.grad is not None and logits.grad.abs().max().item() < 1e-5


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_divergences_are_positive_and_pull_the_student_toward_the_teacher(loss: str) -> None:
    teacher, student_logits, ids, mask = _topk(1)
    logits = student_logits.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([logits], lr=1.0)
    values = []
    for _ in range(60):
        optimizer.zero_grad()
        value, metrics = compute_gkd_loss(
            torch.log_softmax(logits, -1).gather(-1, ids),
            teacher.gather(-1, ids),
            mask,
            loss=loss,
            loss_agg_mode="token-sum",
        )
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert values[0] > 0 and values[-1] < 0.5 * values[0]
    assert 0 < metrics["distill/teacher_mass"].item() <= 1


def test_jsd_limits_are_the_kls() -> None:
    gen = torch.Generator().manual_seed(2)
    s = torch.log_softmax(torch.randn(7, 5, generator=gen), -1)
    t = torch.log_softmax(torch.randn(7, 5, generator=gen), -1)
    forward, reverse = gkd_divergence(s, t, "forward_kl"), gkd_divergence(s, t, "reverse_kl")
    assert torch.allclose(gkd_divergence(s, t, "jsd", beta=0.0), forward)
    assert torch.allclose(gkd_divergence(s, t, "jsd", beta=1.0), reverse)
    # near the ends, JSD_beta ~ beta KL(t || s) and ~ (1 - beta) KL(s || t): O(beta^2) errors
    small = 1e-3
    assert torch.allclose(gkd_divergence(s, t, "jsd", beta=small) / small, forward, rtol=2e-2, atol=1e-4)
    assert torch.allclose(gkd_divergence(s, t, "jsd", beta=1 - small) / small, reverse, rtol=2e-2, atol=1e-4)
    symmetric = gkd_divergence(s, t, "jsd", beta=0.5)
    assert torch.allclose(symmetric, gkd_divergence(t, s, "jsd", beta=0.5), atol=1e-6)
    assert torch.all(symmetric <= torch.log(torch.tensor(2.0)) + 1e-6)
    with pytest.raises(ValueError, match="beta"):
        gkd_divergence(s, t, "jsd", beta=1.5)
    with pytest.raises(ValueError, match="unknown GKD loss"):
        gkd_divergence(s, t, "tvd")


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_masked_positions_do_not_matter(loss: str) -> None:
    teacher, student_logits, ids, mask = _topk(3)
    logits = student_logits.clone().requires_grad_(True)
    student = torch.log_softmax(logits, -1).gather(-1, ids)
    nan = torch.full_like(student, float("nan"))
    poisoned_s = torch.where(mask.bool().unsqueeze(-1), student, nan)
    poisoned_t = torch.where(mask.bool().unsqueeze(-1), teacher.gather(-1, ids), nan)
    value, _ = compute_gkd_loss(poisoned_s, poisoned_t, mask, loss=loss)
    clean, _ = compute_gkd_loss(student, teacher.gather(-1, ids), mask, loss=loss)
    value.backward()
    assert value.item() == pytest.approx(clean.item(), rel=1e-6)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[mask == 0] == 0)


@pytest.mark.parametrize("agg", LOSS_AGG_MODES)
def test_micro_batches_one_by_eight_equal_eight_by_one(agg: str) -> None:
    teacher, student_logits, ids, _ = _topk(4, bs=8)
    mask = (torch.arange(5)[None, :] < torch.tensor([5, 3, 0, 1, 4, 2, 5, 1])[:, None]).float()
    student = torch.log_softmax(student_logits, -1).gather(-1, ids)
    whole, _ = compute_gkd_loss(student, teacher.gather(-1, ids), mask, loss="jsd", loss_agg_mode=agg)
    glob = {
        "batch_num_tokens": mask.sum(),
        "global_batch_size": (mask.sum(-1) > 0).sum(),
        "loss_scale_factor": 5,
    }
    parts = sum(
        compute_gkd_loss(
            student[i : i + 1],
            teacher.gather(-1, ids)[i : i + 1],
            mask[i : i + 1],
            loss="jsd",
            loss_agg_mode=agg,
            **glob,
        )[0]
        for i in range(8)
    )
    assert float(parts) == pytest.approx(whole.item(), rel=1e-5)


def test_tail_bucket_completes_the_distribution() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.1]]))
    full = with_tail(logp)
    assert full.exp().sum().item() == pytest.approx(1.0)
    assert full[0, -1].exp().item() == pytest.approx(0.2)


def test_reverse_kl_advantage() -> None:
    student = torch.log(torch.tensor([[0.5, 0.1, 0.3]]))
    teacher = torch.log(torch.tensor([[0.5, 0.4, 0.3]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = compute_distill_reverse_kl_advantage(student, teacher, mask)
    assert torch.allclose(adv, torch.tensor([[0.0, torch.log(torch.tensor(4.0)).item(), 0.0]]))
    clipped = compute_distill_reverse_kl_advantage(student, teacher, mask, clip=1.0)
    assert clipped[0, 1].item() == 1.0
    poisoned = compute_distill_reverse_kl_advantage(
        student, torch.where(mask > 0, teacher, float("-inf")), mask
    )
    assert torch.equal(poisoned, adv)
