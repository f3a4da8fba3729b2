"""Completions as the RL batch columns of verl's layout (what the trainer puts in a ``Batch``).

Rows are ordered prompt-major: the n samples of prompt 0, then of prompt 1, ... (verl's
``repeat(n, interleave=True)``), so row ``i`` belongs to prompt ``i // n``.

Shape legend: B = prompts x n, P = prompt length, R = response length.
"""

from __future__ import annotations

import torch

from rlkit.rollout.base import Completion


def completions_to_tensors(
    prompt_token_ids: list[list[int]],
    completions: list[list[Completion]],
    *,
    pad_token_id: int,
    prompt_length: int | None = None,
    response_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """The rollout columns of an RL batch.

    Args:
        prompt_token_ids: The prompts given to ``generate``.
        completions: What ``generate`` returned (one list per prompt, the same n for all).
        pad_token_id: Fills padding positions.
        prompt_length: P (default: the longest prompt); prompts are left-padded to it.
        response_length: R (default: the longest completion); completions are right-padded to it.

    Returns:
        ``prompts`` (B, P) left-padded, ``responses`` (B, R) right-padded, ``input_ids`` and
        ``attention_mask`` (B, P + R), ``position_ids`` (B, P + R) = clamp(cumsum(mask) - 1, 0),
        ``response_mask`` (B, R) float, and ``rollout_log_probs`` (B, R) fp32 (0 on padding; all
        0 if the engine returned no log-probs).

    Raises:
        ValueError: groups of different sizes, or a prompt/completion longer than P/R.
    """
    sizes = {len(group) for group in completions}
    if len(completions) != len(prompt_token_ids) or len(sizes) > 1:
        raise ValueError("completions must hold one group of the same size per prompt")
    rows = [(prompt, c) for prompt, group in zip(prompt_token_ids, completions, strict=True) for c in group]
    p_len = prompt_length if prompt_length is not None else max(len(p) for p, _ in rows)
    r_len = response_length if response_length is not None else max(len(c.token_ids) for _, c in rows)
    b = len(rows)
    prompts = torch.full((b, p_len), pad_token_id, dtype=torch.long)
    responses = torch.full((b, r_len), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, p_len), dtype=torch.long)
    response_mask = torch.zeros((b, r_len), dtype=torch.float32)
    logprobs = torch.zeros((b, r_len), dtype=torch.float32)
    for i, (prompt, c) in enumerate(rows):
        n, m = len(prompt), len(c.token_ids)
        if n > p_len or m > r_len:
            raise ValueError(f"row {i}: prompt {n} / response {m} tokens exceed {p_len} / {r_len}")
        prompts[i, p_len - n :] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[i, p_len - n :] = 1
        responses[i, :m] = torch.tensor(c.token_ids, dtype=torch.long)
        response_mask[i, :m] = 1.0
        if c.logprobs is not None:
            logprobs[i, :m] = torch.tensor(c.logprobs, dtype=torch.float32)
    attention_mask = torch.cat((prompt_mask, response_mask.long()), dim=1)
    return {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat((prompts, responses), dim=1),
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(dim=1) - 1).clamp(min=0),
        "response_mask": response_mask,
        "rollout_log_probs": logprobs,
    }
