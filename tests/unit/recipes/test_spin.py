"""SPIN (rlkit.recipes.spin, rlkit.algos.compute_online_dpo_weights) on hand-made batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlkit.algos import compute_online_dpo_loss, compute_online_dpo_weights, masked_sum, policy_losses
from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config
from rlkit.data.batch import Batch
from rlkit.data.rl_dataset import PromptItem, collate_prompts
from rlkit.errors import UserError
from rlkit.models import load_tokenizer
from rlkit.recipes.spin import (
    CHOSEN,
    SPINHooks,
    build_pairs,
    reference_text,
    reference_token_ids,
    spin_advantages,
)
from rlkit.rollout.base import Completion
from rlkit.trainer.hooks import load_hooks
from rlkit.trainer.rollout_batch import completions_to_batch

PAD = 256


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("builtin:tiny")


def prompt_batch(prompt_ids: list[list[int]]) -> Batch:
    items = [
        PromptItem(ids, "arith", str(i), {"index": i}, [{"role": "user", "content": "q"}], i)
        for i, ids in enumerate(prompt_ids)
    ]
    columns = collate_prompts(items, PAD)
    tensors = {k: v for k, v in columns.items() if isinstance(v, torch.Tensor)}
    batch = Batch(tensors, {k: v for k, v in columns.items() if k not in tensors})
    batch.set("uid", np.array([f"u{i}" for i in range(len(items))], dtype=object))
    return batch


def test_reference_text_from_ground_truth_or_extra_info() -> None:
    assert reference_text("42", {"answer": "6*7 = 42"}, None) == "42"
    assert reference_text("42", {"answer": "6*7 = 42"}, "answer") == "6*7 = 42"
    with pytest.raises(UserError, match="reference_key='solution'"):
        reference_text("42", {"answer": "x"}, "solution")
    with pytest.raises(UserError, match="empty"):
        reference_text(" ", {}, None)


def test_reference_tokens_end_the_assistant_turn(tokenizer) -> None:
    messages = [{"role": "user", "content": "23+45="}]
    ids = reference_token_ids(tokenizer, messages, "68", chat_template=True)
    assert ids == [ord("6"), ord("8"), tokenizer.convert_tokens_to_ids("<|im_end|>")]
    plain = reference_token_ids(tokenizer, messages, "68", chat_template=False)
    assert plain == [ord("6"), ord("8"), tokenizer.eos_token_id]
    # the reference continues the generation prompt exactly as the template renders the whole turn
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    turn = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": "68"}], tokenize=True)[
        "input_ids"
    ]
    assert turn[: len(prompt) + len(ids)] == [*prompt, *ids]


def test_build_pairs_interleaves_reference_and_samples() -> None:
    prompts = prompt_batch([[1, 2, 3], [4, 5]])
    samples = [[Completion([10, 11], None, None, "stop"), Completion([12], None, None, "stop")]] + [
        [Completion([13, 14, 15, 16], None, None, "length"), Completion([17], None, None, "stop")]
    ]
    generated = completions_to_batch(prompts, samples, pad_id=PAD, max_response_length=4)
    pairs, truncated = build_pairs(
        prompts, generated, [[7, 8], [9, 9, 9, 9, 9]], pad_id=PAD, max_response_length=4
    )
    assert truncated == 1
    assert len(pairs) == 8 and pairs[CHOSEN].tolist() == [True, False] * 4
    assert "rollout_log_probs" not in pairs
    assert pairs["uid"].tolist() == ["u0"] * 4 + ["u1"] * 4
    responses = [
        row[m.bool()].tolist() for row, m in zip(pairs["responses"], pairs["response_mask"], strict=True)
    ]
    assert responses == [[7, 8], [10, 11], [7, 8], [12], [9, 9, 9, 9], [13, 14, 15, 16], [9, 9, 9, 9], [17]]
    assert pairs["finished"].tolist() == [True, True, True, True, False, False, False, True]
    # every row is a whole sequence: the prompt's real tokens, then the response, left-padded prompts
    for row in range(8):
        ids = pairs["input_ids"][row][pairs["attention_mask"][row].bool()].tolist()
        prompt = [1, 2, 3] if row < 4 else [4, 5]
        assert ids == prompt + responses[row]


def test_dpo_weights_closed_forms() -> None:
    chosen, rejected = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    ref_c, ref_r = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])
    x = torch.tensor([1.0, -2.0])  # (pi_c - pi_r) - (ref_c - ref_r)
    beta, eps = 0.5, 0.1
    w_c, w_r, loss = compute_online_dpo_weights(chosen, rejected, ref_c, ref_r, beta, label_smoothing=eps)
    expected = beta * (torch.sigmoid(-beta * x) * (1 - eps) - torch.sigmoid(beta * x) * eps)
    assert w_c.tolist() == pytest.approx(expected.tolist()) and w_r.tolist() == pytest.approx(
        (-expected).tolist()
    )
    assert float(loss) == pytest.approx(
        float(compute_online_dpo_loss(chosen, rejected, ref_c, ref_r, beta, eps))
    )
    w_c, w_r, _ = compute_online_dpo_weights(chosen, rejected, ref_c, ref_r, beta, loss_type="ipo")
    assert w_c.tolist() == pytest.approx((-2 * (x - 1 / (2 * beta))).tolist())
    with pytest.raises(ValueError, match="at least one pair"):
        compute_online_dpo_weights(*[torch.zeros(0)] * 4, beta)


def pair_batch(seed: int, pairs: int = 3, width: int = 5) -> tuple[Batch, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (2 * pairs,), generator=gen)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    logp = -torch.rand(2 * pairs, width, generator=gen) * 2
    batch = Batch(
        tensors={
            "response_mask": mask,
            "old_log_probs": logp,
            "ref_log_prob": logp - 0.3 * torch.randn(2 * pairs, width, generator=gen),
            "seq_score": torch.tensor([1.0, 0.0] * pairs),
            CHOSEN: torch.arange(2 * pairs) % 2 == 0,
        }
    )
    return batch, logp


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_pair_weights_give_the_dpo_gradient_through_the_actor_loss(loss_type: str) -> None:
    batch, logp = pair_batch(0)
    mask, ref = batch["response_mask"], batch["ref_log_prob"]
    advantages, metrics = spin_advantages(batch, beta=0.1, loss_type=loss_type)
    # the actor's loss (gpg, seq-mean-token-sum), cut into two micro-batches that split a pair
    leaf = logp.clone().requires_grad_(True)
    total = 6
    for rows in ([0, 1, 2], [3, 4, 5]):
        loss, _ = policy_losses["gpg"](
            logp[rows], leaf[rows], advantages[rows], mask[rows],
            loss_agg_mode="seq-mean-token-sum", global_batch_size=total,
        )  # fmt: skip
        loss.backward()
    # the DPO loss of the whole batch, in one piece
    direct = logp.clone().requires_grad_(True)
    seq, ref_seq = masked_sum(direct, mask, dim=-1), masked_sum(ref, mask, dim=-1)
    dpo = compute_online_dpo_loss(
        seq[0::2], seq[1::2], ref_seq[0::2], ref_seq[1::2], 0.1, loss_type=loss_type
    )
    dpo.backward()
    assert leaf.grad is not None and direct.grad is not None
    torch.testing.assert_close(leaf.grad, direct.grad)
    assert metrics["spin/dpo_loss"] == pytest.approx(float(dpo.detach()))
    assert metrics["spin/chosen_score"] == 1.0 and metrics["spin/generated_score"] == 0.0


def test_pair_metrics_and_layout_check() -> None:
    batch, _ = pair_batch(1, pairs=2)
    batch.set("ref_log_prob", batch["old_log_probs"].clone())  # a freshly refreshed reference
    _, metrics = spin_advantages(batch, beta=0.1, loss_type="sigmoid")
    assert metrics["spin/dpo_loss"] == pytest.approx(math.log(2.0))
    assert metrics["spin/reward_margin"] == 0.0 and metrics["spin/reward_accuracy"] == 0.0
    batch.set(CHOSEN, torch.tensor([False, True, True, False]))
    with pytest.raises(ValueError, match="alternate"):
        spin_advantages(batch, beta=0.1, loss_type="sigmoid")


def test_before_update_needs_a_reference_model() -> None:
    batch, _ = pair_batch(2)
    batch.pop(["ref_log_prob"])
    with pytest.raises(UserError, match="reference model"):
        SPINHooks().before_update(None, batch)


def test_recipe_config_is_spin() -> None:
    cfg = to_dataclass(load_config("spin", overrides=["data.batch_size=8"]))
    assert cfg.actor.loss_mode == "gpg" and cfg.actor.loss_agg_mode == "seq-mean-token-sum"
    assert cfg.actor.mini_batch_size == 8  # one optimizer step per step: the pair weights are exact
    assert cfg.ref.enable and cfg.ref.update_every > 0 and cfg.rollout.n == 1
    assert (cfg.actor.dpo_beta, cfg.actor.dpo_loss_type) == (0.1, "sigmoid")
    assert isinstance(load_hooks(cfg.hooks), SPINHooks)


def test_spin_keeps_the_old_log_prob_pass_its_weights_read() -> None:
    """One mini-batch would let ``actor.old_log_probs=auto`` take them from the update, after the
    pair weights that need them: SPIN's hooks say they read them, so the pass runs."""
    from rlkit.trainer.core import RLTrainer

    cfg = to_dataclass(load_config("spin", overrides=["data.batch_size=8", "actor.old_log_probs=auto"]))
    assert RLTrainer(cfg, load_hooks(cfg.hooks)).old_log_probs == "recompute"
    assert RLTrainer(cfg).old_log_probs == "update"
