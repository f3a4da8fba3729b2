"""Metrics of an RL batch, with verl's names where verl has them.

Shape legend: B = rows (prompts x samples), R = response length.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from rlkit.agents.rollouts import tool_metric_sums
from rlkit.algos import kl_penalty
from rlkit.data.batch import Batch


def _masked_mean(values_BR: torch.Tensor, mask_BR: torch.Tensor) -> float:
    return float((values_BR * mask_BR).sum() / mask_BR.sum().clamp(min=1))


def batch_metrics(batch: Batch) -> dict[str, float]:
    """Reward, length, advantage and rollout/trainer log-prob-gap statistics of a training batch."""
    mask = batch["response_mask"].float()
    scores = batch["token_level_scores"].sum(-1)
    lengths = mask.sum(-1)
    width = mask.shape[1]
    out = {
        "reward/mean": float(scores.mean()),
        "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
        "reward/max": float(scores.max()),
        "reward/min": float(scores.min()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/clip_ratio": float((lengths >= width).float().mean()),
        "prompt_length/mean": float(batch["prompt_attention_mask"].float().sum(-1).mean()),
        "advantages/mean": _masked_mean(batch["advantages"], mask),
    }
    if "entropy" in batch:
        out["actor/entropy"] = _masked_mean(batch["entropy"], mask)
    if "token_level_rewards" in batch:
        out["reward/token_level_rewards_mean"] = float(batch["token_level_rewards"].sum(-1).mean())
    if "values" in batch:
        out["critic/values_mean"] = _masked_mean(batch["values"], mask)
        out["critic/returns_mean"] = _masked_mean(batch["returns"], mask)
    old, rollout = batch.tensors.get("old_log_probs"), batch.tensors.get("rollout_log_probs")
    if old is not None and rollout is not None and old is not rollout:  # the same tensor in bypass mode
        gap = (old - rollout).abs()
        out["rollout/logprob_gap_abs"] = _masked_mean(gap, mask)
        # the largest token's gap: one wrong token stands out here, rounding stays near the mean
        out["rollout/logprob_gap_max"] = float(gap[mask.bool()].max()) if mask.any() else 0.0
        out["rollout/logprob_gap_k3"] = _masked_mean(kl_penalty(rollout, old, "k3"), mask)
    out.update(agent_metrics(batch))
    return out


def agent_metrics(batch: Batch, prefix: str = "agent/") -> dict[str, float]:
    """Multi-turn metrics from a batch's per-row ``agent_*`` columns (none in single-turn batches).

    Per trajectory (means): turns, tool calls, tokens by role (prompt / model / template);
    fractions of trajectories: truncated; counts: template mismatches; per call: errors,
    timeouts, malformed calls, success rate and latency; summed over the batch: the numbers
    each tool reported (``PREFIX tool/<name>/<key>``, from the rows' ``extra_info.agent``).
    """
    if "agent_num_turns" not in batch:
        return {}
    col = {name: batch[f"agent_{name}"].float() for name in _AGENT_COLUMNS}
    calls = float(col["tool_calls"].sum())
    per_call = max(calls, 1.0)
    failed = float(col["tool_errors"].sum() + col["tool_timeouts"].sum())
    return _tool_reported(batch, prefix) | {
        f"{prefix}num_turns/mean": float(col["num_turns"].mean()),
        f"{prefix}num_turns/max": float(col["num_turns"].max()),
        f"{prefix}tool_calls/mean": float(col["tool_calls"].mean()),
        f"{prefix}tool_calls/total": calls,
        f"{prefix}tool_errors/rate": float(col["tool_errors"].sum()) / per_call,
        f"{prefix}tool_timeouts/rate": float(col["tool_timeouts"].sum()) / per_call,
        f"{prefix}tool_malformed/rate": float(col["tool_malformed"].sum()) / per_call,
        f"{prefix}tool_success/rate": (calls - failed) / per_call if calls else 0.0,
        f"{prefix}tool_latency_s/mean": float(col["tool_latency_s"].sum()) / per_call,
        f"{prefix}tokens/prompt_mean": float(col["tokens_prompt"].mean()),
        f"{prefix}tokens/model_mean": float(col["tokens_model"].mean()),
        f"{prefix}tokens/template_mean": float(col["tokens_template"].mean()),
        f"{prefix}truncated/rate": float(col["truncated"].mean()),
        f"{prefix}template_mismatch/count": float(col["template_mismatch"].sum()),
    }


def _tool_reported(batch: Batch, prefix: str) -> dict[str, float]:
    """The tools' own metrics summed over the batch's trajectories (none without ``extra_info``)."""
    if "extra_info" not in batch:
        return {}
    records = (
        call
        for info in batch["extra_info"]
        if isinstance(info, dict)
        for call in (info.get("agent") or {}).get("tool_calls") or ()
    )
    return tool_metric_sums(records, prefix=f"{prefix}tool/")


_AGENT_COLUMNS = (
    "num_turns", "tool_calls", "tool_errors", "tool_timeouts", "tool_malformed", "tool_latency_s",
    "tokens_prompt", "tokens_model", "tokens_template", "truncated", "template_mismatch",
)  # fmt: skip


def validation_metrics(batch: Batch) -> dict[str, float]:
    """``val/reward/mean`` and one ``val/reward/<data_source>`` per source, plus response length."""
    scores = batch["token_level_scores"].sum(-1).numpy()
    out = {
        "val/reward/mean": float(scores.mean()),
        "val/response_length/mean": float(batch["response_mask"].float().sum(-1).mean()),
    }
    by_source: dict[str, list[float]] = defaultdict(list)
    for source, score in zip(batch["data_source"], scores, strict=True):
        by_source[str(source)].append(float(score))
    for source, values in by_source.items():
        out[f"val/reward/{source}"] = float(np.mean(values))
    out.update(agent_metrics(batch, prefix="val/agent/"))
    return out


def merge_rank_gauges(per_rank: list[dict[str, float] | None]) -> dict[str, float]:
    """The gauges of every rank as one set: counts and rates summed, fractions (``*_fraction``,
    ``*_usage``, ``*_frac``, ``*_ratio``) averaged; ranks that did not answer (None) left out."""
    answered = [g for g in per_rank if g]
    out: dict[str, float] = {}
    for name in sorted({k for g in answered for k in g}):
        values = [g[name] for g in answered if name in g]
        fraction = name.endswith(("_fraction", "_usage", "_frac", "_ratio"))
        out[name] = sum(values) / len(values) if fraction else sum(values)
    return out
