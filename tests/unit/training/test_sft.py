"""SFTRole on one process: the packed loss equals the padded reference, micro-batch split invariance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlkit.data.batch import Batch
from rlkit.models import load_causal_lm
from rlkit.training.sft import SFTRole, pad_for_ranks, sft_batch, sft_micro_batches

from ._sft_builders import LENGTHS, conversations, reference_nll

pytestmark = pytest.mark.usefixtures("process_group")


def _batch(seed: int = 0) -> Batch:
    c = conversations(LENGTHS, seed=seed)
    return sft_batch(c["input_ids"], c["attention_mask"], c["loss_mask"])


def _role(path: Path, **kw: object) -> SFTRole:
    settings: dict[str, object] = {
        "lr": 1e-3,
        "total_steps": 10,
        "micro_batch_tokens": 24,
        "logprob_chunk_tokens": 5,
    }
    settings.update(kw)
    return SFTRole(str(path), **settings)  # type: ignore[arg-type]


def test_sft_batch_is_the_rl_layout_with_a_one_token_prompt() -> None:
    c = conversations([5, 3], seed=1)
    batch = sft_batch(c["input_ids"], c["attention_mask"], c["loss_mask"])
    assert batch["prompts"].shape == (2, 1) and batch["responses"].shape == (2, 4)
    torch.testing.assert_close(batch["response_mask"], (c["loss_mask"] * c["attention_mask"])[:, 1:].float())
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4]
    padded = pad_for_ranks(batch, 4)
    assert len(padded) == 4 and padded["response_mask"][2:].sum() == 0
    assert padded["attention_mask"][2:].tolist() == [[1, 0, 0, 0, 0]] * 2
    assert batch["response_mask"].sum() > 0  # the caller's batch is untouched
    with pytest.raises(ValueError, match="right-padded"):
        sft_batch(c["input_ids"].flip(1), c["attention_mask"].flip(1), c["loss_mask"].flip(1))


def test_only_loss_positions_reach_the_lm_head() -> None:
    batch = _batch()
    mbs = sft_micro_batches(batch, budget=24, device=torch.device("cpu"))
    assert sum(len(mb.labels_N) for mb in mbs if not mb.is_padding) == int(batch["response_mask"].sum())
    assert all(mb.num_tokens <= 24 for mb in mbs)
    for mb in mbs:
        # every gathered position predicts the token right after it, inside the same conversation
        packed_next = mb.input_ids_T[mb.gather_idx_N + 1]
        torch.testing.assert_close(packed_next, mb.labels_N)


@pytest.mark.parametrize("budget", [12, 1000])
def test_packed_loss_equals_padded_cross_entropy(tiny_model_dir: Path, budget: int) -> None:
    c = conversations(LENGTHS, seed=2)
    batch = sft_batch(c["input_ids"], c["attention_mask"], c["loss_mask"])
    expected = reference_nll(load_causal_lm(str(tiny_model_dir)), c)
    role = _role(tiny_model_dir, micro_batch_tokens=budget)
    evaluated = role.eval_loss(batch)
    assert evaluated["val/loss"] == pytest.approx(float(expected), rel=1e-5)
    assert evaluated["val/loss_tokens"] == float(batch["response_mask"].sum())
    assert evaluated["val/tokens"] == float(sum(LENGTHS))
    trained = role.train_step(batch)  # reports the loss before its update
    assert trained["sft/loss"] == pytest.approx(float(expected), rel=1e-5)
    assert role.eval_loss(batch)["val/loss"] < trained["sft/loss"]


def _params(role: SFTRole) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in role.named_full_tensors(torch.float32)}


def test_one_conversation_per_micro_batch_equals_one_micro_batch(tiny_model_dir: Path) -> None:
    batch = _batch(seed=3)
    results = []
    for budget in (1, sum(LENGTHS)):  # 8 micro-batches of 1 (each over budget, alone) vs 1 of 8
        role = _role(tiny_model_dir, micro_batch_tokens=budget)
        assert len(sft_micro_batches(batch, budget, torch.device("cpu"))) == (8 if budget == 1 else 1)
        metrics = [role.train_step(batch) for _ in range(2)]
        results.append((metrics, _params(role)))
    (m_small, p_small), (m_big, p_big) = results
    for step in range(2):
        for key in ("sft/loss", "actor/grad_norm", "actor/lr"):
            assert m_small[step][key] == pytest.approx(m_big[step][key], rel=1e-5, abs=1e-7), key
    for name in p_small:
        torch.testing.assert_close(p_small[name], p_big[name], atol=1e-5, rtol=1e-5)


def test_rows_without_loss_tokens_change_nothing(tiny_model_dir: Path) -> None:
    batch = _batch(seed=4)
    plain = _role(tiny_model_dir).train_step(batch)
    padded = _role(tiny_model_dir).train_step(pad_for_ranks(batch, 5))  # 8 -> 10 rows, 2 without loss
    for key in ("sft/loss", "actor/grad_norm", "sft/loss_tokens"):
        assert padded[key] == pytest.approx(plain[key], rel=1e-5), key
