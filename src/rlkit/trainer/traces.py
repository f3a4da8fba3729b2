"""Pick a sample of a step's training batch and turn it into trace columns (``rlkit.logging.traces``).

Shape legend: B = rows of the batch (prompts x samples), P = prompt length, R = response length.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from rlkit.data.batch import Batch


def sample_rows(rows: int, k: int, seed: int) -> list[int]:
    """``k`` distinct row indices out of ``rows`` (all of them when ``k >= rows``), sorted, seeded."""
    if k >= rows:
        return list(range(rows))
    return sorted(np.random.default_rng(seed).choice(rows, size=k, replace=False).tolist())


def trace_columns(batch: Batch, tokenizer: Any, rows: list[int]) -> dict[str, list[Any]]:
    """Trace columns (``TRACE_SCHEMA`` less ``step``) of the given rows of a scored, advantaged batch.

    Shape:
        batch: ``prompts``/``prompt_attention_mask`` (B, P); ``responses``, ``response_mask``,
        ``advantages`` (B, R); ``seq_score`` (B,); optional ``rollout_log_probs`` and
        ``old_log_probs`` (B, R), ``finished`` (B,), ``extra_info`` (B,) dicts (multi-turn rows:
        ``extra_info["agent"]`` is the trajectory, written to the ``trajectory`` column as JSON).
    """
    prompt_mask = batch["prompt_attention_mask"].bool()
    mask = batch["response_mask"].bool()
    prompt_ids = [batch["prompts"][i][prompt_mask[i]].tolist() for i in rows]
    response_ids = [batch["responses"][i][mask[i]].tolist() for i in rows]
    width = mask.shape[1]
    finished = batch["finished"] if "finished" in batch else None
    adv = batch["advantages"].float()
    cols: dict[str, list[Any]] = {
        "row": list(rows),
        "uid": [str(batch["uid"][i]) if "uid" in batch else "" for i in rows],
        "data_source": [str(batch["data_source"][i]) if "data_source" in batch else "" for i in rows],
        "prompt": tokenizer.batch_decode(prompt_ids, skip_special_tokens=False),
        "response": tokenizer.batch_decode(response_ids, skip_special_tokens=False),
        "ground_truth": [_text(batch["ground_truth"][i]) if "ground_truth" in batch else "" for i in rows],
        "prompt_ids": prompt_ids,
        "response_ids": response_ids,
        "reward": [float(batch["token_level_scores"][i].sum()) for i in rows],
        "advantage": [_masked_mean(adv[i], mask[i]) for i in rows],
        "prompt_length": [len(ids) for ids in prompt_ids],
        "response_length": [len(ids) for ids in response_ids],
        "finish_reason": [
            _finish_reason(finished, i, len(response_ids[j]), width) for j, i in enumerate(rows)
        ],
    }
    cols.update(_logprob_gaps(batch, mask, rows))
    if "extra_info" in batch:  # multi-turn rows carry their trajectory there (trainer/rollout_batch.py)
        agents = [_agent(batch["extra_info"][i]) for i in rows]
        if any(a is not None for a in agents):
            cols["trajectory"] = [None if a is None else json.dumps(a, default=str) for a in agents]
    return cols


def _logprob_gaps(batch: Batch, mask: torch.Tensor, rows: list[int]) -> dict[str, list[float | None]]:
    """Per row: mean and max ``|old_log_probs - rollout_log_probs|`` over response tokens (None if absent)."""
    if "rollout_log_probs" not in batch or "old_log_probs" not in batch:
        return {"logprob_gap_mean": [None] * len(rows), "logprob_gap_max": [None] * len(rows)}
    gap = (batch["old_log_probs"].float() - batch["rollout_log_probs"].float()).abs()
    means: list[float | None] = [_masked_mean(gap[i], mask[i]) for i in rows]
    maxes: list[float | None] = [float(gap[i][mask[i]].max()) if mask[i].any() else 0.0 for i in rows]
    return {"logprob_gap_mean": means, "logprob_gap_max": maxes}


def _masked_mean(values_R: torch.Tensor, mask_R: torch.Tensor) -> float:
    return float(values_R[mask_R].mean()) if mask_R.any() else 0.0


def _finish_reason(finished: Any, i: int, length: int, width: int) -> str:
    """``stop`` (an end token), ``length`` (cut at ``max_response_length``)."""
    if finished is not None:
        return "stop" if bool(finished[i]) else "length"
    return "length" if length >= width else "stop"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _agent(info: Any) -> dict[str, Any] | None:
    """A multi-turn row's trajectory (messages, tool calls, turns, finish reason), else None."""
    agent = info.get("agent") if isinstance(info, dict) else None
    return agent if isinstance(agent, dict) else None
