"""SPIN hooks: self-play fine-tuning (Chen et al. 2024, https://arxiv.org/abs/2401.01335, docs/recipes/spin.md).

Each generated response (the model's own, "rejected") is paired with the prompt's reference response
from the data ("chosen"), and the policy minimises the DPO loss of the pair against a reference model
that the trainer refreshes from the actor every ``ref.update_every`` steps (the previous SPIN
iteration's model). The pair rows sit next to each other: row ``2i`` is chosen, ``2i + 1`` rejected.

The DPO loss couples the two rows of a pair, while the actor cuts its batch into micro-batches by
tokens. So the loss enters the actor as its gradient: each response gets the weight ``w = -dl/ds``
of its pair's loss at the step's old log-probs (:func:`rlkit.algos.compute_online_dpo_weights`), and
the actor's plain policy-gradient loss (``gpg``: ``-A logp`` summed per sequence, averaged over
sequences) with ``A = 2 w`` has exactly the DPO gradient when the step makes one optimizer step
(``actor.mini_batch_size == data.batch_size``, one epoch; the recipe's default).

Shape legend: N = prompts, n = samples per prompt, B = 2 N n rows, R = response length.
"""

from __future__ import annotations

from typing import Any

import torch

from rlkit.algos import compute_online_dpo_weights, masked_sum
from rlkit.data.batch import Batch
from rlkit.data.chat import as_messages, render
from rlkit.errors import UserError
from rlkit.rollout.base import Completion
from rlkit.trainer.hooks import Hooks
from rlkit.trainer.rollout_batch import completions_to_batch

CHOSEN = "spin_chosen"
"""Bool column: True on the rows that hold the reference (chosen) response."""


def reference_text(ground_truth: Any, extra_info: Any, key: str | None) -> str:
    """A prompt's reference response: ``extra_info[key]``, or the ground truth when ``key`` is None.

    Raises:
        UserError: The row has no such key, or the reference is empty.
    """
    if key is None:
        text = ground_truth
    elif isinstance(extra_info, dict) and key in extra_info:
        text = extra_info[key]
    else:
        present = sorted(extra_info) if isinstance(extra_info, dict) else []
        raise UserError(
            f"data.reference_key={key!r}: a row's extra_info has no such key (it has: {', '.join(present)})",
            hint="point data.reference_key at the reference responses, or null for reward_model.ground_truth",
        )
    if text is None or not str(text).strip():
        raise UserError("SPIN needs a reference response per prompt; a row's reference is empty")
    return str(text)


def reference_token_ids(tokenizer: Any, messages: Any, reply: str, *, chat_template: bool) -> list[int]:
    """Token ids of ``reply`` as the model's turn after the prompt, with its end-of-turn token.

    With a chat template the reply is what the template adds after the generation prompt, up to and
    including the end of the assistant turn (as SFT's loss mask); without one it is the reply's
    tokens followed by eos.

    Raises:
        UserError: The template does not render the reply after the generation prompt.
    """
    if not chat_template:
        ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
        return [*ids, int(tokenizer.eos_token_id)]
    conversation = as_messages(messages, "SPIN prompt")
    before = render(tokenizer, conversation, add_generation_prompt=True)
    turn = [*conversation, {"role": "assistant", "content": reply}]
    upto = render(tokenizer, turn, add_generation_prompt=False).rstrip()
    if not upto.startswith(before) or len(upto) == len(before):
        raise UserError(
            "the chat template does not render the reference reply after the generation prompt",
            hint="set data.chat_template=false to use plain text prompts",
        )
    return list(tokenizer(upto[len(before) :], add_special_tokens=False)["input_ids"])


def build_pairs(
    prompts: Batch, generated: Batch, references: list[list[int]], *, pad_id: int, max_response_length: int
) -> tuple[Batch, int]:
    """Interleave each generated row (rejected) after a row holding its prompt's reference (chosen).

    Args:
        prompts: The N prompts (``prompts``, ``prompt_attention_mask`` and per-prompt columns).
        generated: Their N x n samples, a prompt's samples adjacent (the rollout's layout).
        references: Token ids of each prompt's reference response.
        pad_id: Padding token id.
        max_response_length: Width R; longer references are cut (and counted).

    Returns:
        The 2 N n pair rows with the rollout's columns (the reference rows have no rollout
        log-probs nor policy versions, so ``rollout_log_probs`` and ``rollout_versions`` are
        dropped) plus ``spin_chosen``, and the number of references that were cut.
    """
    if len(references) != len(prompts) or len(generated) % len(prompts):
        raise ValueError(
            f"{len(references)} references / {len(generated)} samples for {len(prompts)} prompts"
        )
    n = len(generated) // len(prompts)
    completions = [[_completion(ids, max_response_length)] * n for ids in references]
    chosen = completions_to_batch(
        prompts, completions, pad_id=pad_id, max_response_length=max_response_length
    )
    rejected = Batch(generated.tensors, generated.non_tensors)
    for part in (chosen, rejected):  # columns a reference row has no value for
        part.tensors.pop("rollout_log_probs", None)
        part.tensors.pop("rollout_versions", None)
    rows = len(generated)
    order = torch.stack([torch.arange(rows), torch.arange(rows) + rows], dim=1).reshape(-1)
    pairs = Batch.concat([chosen, rejected]).index(order)
    pairs.set(CHOSEN, torch.arange(2 * rows) % 2 == 0)
    truncated = sum(len(ids) > max_response_length for ids in references)
    return pairs, truncated


def _completion(ids: list[int], max_response_length: int) -> Completion:
    """A reference response as the rollout engine would return it (cut ones finish by length)."""
    if len(ids) <= max_response_length:
        return Completion(ids, None, None, "stop")
    return Completion(ids[:max_response_length], None, None, "length")


def spin_advantages(batch: Batch, *, beta: float, loss_type: str) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO pair weights as advantages (twice the weight: the actor averages over 2P sequences, the
    pair loss over P pairs), and the pair metrics at the step's old log-probs.

    Raises:
        ValueError: The rows are not chosen/rejected pairs.

    Shape:
        batch: ``old_log_probs``, ``ref_log_prob``, ``response_mask`` (B, R); ``spin_chosen`` (B,).
        return: (B, R).
    """
    chosen = batch.tensors[CHOSEN]
    if len(chosen) % 2 or not bool(chosen[0::2].all()) or bool(chosen[1::2].any()):
        raise ValueError("SPIN rows must alternate chosen, rejected")
    mask = batch.tensors["response_mask"]
    policy = masked_sum(batch.tensors["old_log_probs"], mask, dim=-1)
    ref = masked_sum(batch.tensors["ref_log_prob"], mask, dim=-1)
    w_chosen, w_rejected, loss = compute_online_dpo_weights(
        policy[0::2], policy[1::2], ref[0::2], ref[1::2], beta, loss_type=loss_type
    )
    weights = torch.stack([w_chosen, w_rejected], dim=1).reshape(-1)
    margins = beta * ((policy[0::2] - ref[0::2]) - (policy[1::2] - ref[1::2]))
    scores = batch.tensors["seq_score"]
    metrics = {
        "spin/dpo_loss": float(loss),
        "spin/reward_margin": float(margins.mean()),
        "spin/reward_accuracy": float((margins > 0).float().mean()),
        "spin/chosen_logp": float(policy[0::2].mean()),
        "spin/generated_logp": float(policy[1::2].mean()),
        "spin/chosen_score": float(scores[0::2].float().mean()),
        "spin/generated_score": float(scores[1::2].float().mean()),
    }
    return (2.0 * weights).unsqueeze(-1) * mask.float(), metrics


class SPINHooks(Hooks):
    """Pairs in ``after_generate``; DPO weights in ``before_update``."""

    reads_old_log_probs = True  # the DPO weights are computed from the policy's log-probs

    def __init__(self) -> None:
        self.truncated = 0

    def after_generate(self, run: Any, prompts: Batch, batch: Batch) -> Batch:
        cfg = run.cfg
        references = [
            reference_token_ids(
                run.tokenizer,
                messages,
                reference_text(truth, extra, cfg.data.reference_key),
                chat_template=cfg.data.chat_template,
            )
            for messages, truth, extra in zip(
                prompts["raw_prompt"], prompts["ground_truth"], prompts["extra_info"], strict=True
            )
        ]
        pairs, truncated = build_pairs(
            prompts,
            batch,
            references,
            pad_id=run.data.pad_id,
            max_response_length=cfg.data.max_response_length,
        )
        self.truncated += truncated
        return pairs

    def before_update(self, run: Any, batch: Batch) -> dict[str, float]:
        if "ref_log_prob" not in batch:
            raise UserError("SPIN needs a reference model", hint="set ref.enable=true")
        actor = run.cfg.actor
        advantages, metrics = spin_advantages(batch, beta=actor.dpo_beta, loss_type=actor.dpo_loss_type)
        batch.set("advantages", advantages)
        batch.set("returns", advantages)
        metrics["spin/references_truncated"] = float(self.truncated)
        self.truncated = 0
        return metrics


def hooks() -> Hooks:
    return SPINHooks()
