"""Turn prompts and the rollout engine's completions into the RL batch (verl's column layout).

Shape legend: N = prompts, n = samples per prompt, B = N * n rows (a prompt's samples are adjacent),
P = prompt length (left-padded), R = ``max_response_length`` (right-padded).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlkit.data.batch import Batch
from rlkit.rollout.base import Completion


def prompt_token_lists(prompts_NP: torch.Tensor, prompt_attention_mask_NP: torch.Tensor) -> list[list[int]]:
    """The real (unpadded) token ids of each left-padded prompt."""
    return [row[mask.bool()].tolist() for row, mask in zip(prompts_NP, prompt_attention_mask_NP, strict=True)]


def completions_to_batch(
    prompt_batch: Batch, completions: Sequence[Sequence[Completion]], *, pad_id: int, max_response_length: int
) -> Batch:
    """Rows for every (prompt, sample): the prompt batch repeated n times (interleaved) plus responses.

    Shape:
        prompt_batch: ``prompts`` (N, P) and ``prompt_attention_mask`` (N, P); other columns are repeated.
        Returns ``responses``, ``response_mask``, ``rollout_log_probs`` (B, R), ``input_ids``,
        ``attention_mask``, ``position_ids`` (B, P + R), and the repeated prompt columns.
    """
    n = len(completions[0])
    if any(len(group) != n for group in completions):
        raise ValueError("every prompt must have the same number of completions")
    flat = [c for group in completions for c in group]
    rows, width = len(flat), max_response_length
    responses = torch.full((rows, width), pad_id, dtype=torch.long)
    response_mask = torch.zeros(rows, width, dtype=torch.float32)
    logprobs = torch.zeros(rows, width, dtype=torch.float32)
    for i, completion in enumerate(flat):
        ids = completion.token_ids[:width]
        responses[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        response_mask[i, : len(ids)] = 1.0
        if completion.logprobs is not None:
            logprobs[i, : len(ids)] = torch.tensor(completion.logprobs[:width], dtype=torch.float32)
    out = prompt_batch.repeat(n, interleave=True)
    attention_mask = torch.cat([out["prompt_attention_mask"].long(), response_mask.long()], dim=1)
    out.set("responses", responses)
    out.set("response_mask", response_mask)
    out.set("rollout_log_probs", logprobs)
    out.set("input_ids", torch.cat([out["prompts"], responses], dim=1))
    out.set("attention_mask", attention_mask)
    out.set("position_ids", (attention_mask.cumsum(-1) - 1).clamp(min=0))
    out.set("finished", torch.tensor([c.finish_reason == "stop" for c in flat]))
    return out
