"""Metrics of an RL batch, with verl's names where verl has them.

Shape legend: B = rows (prompts x samples), R = response length.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

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
        out["rollout/logprob_gap_abs"] = _masked_mean((old - rollout).abs(), mask)
        out["rollout/logprob_gap_k3"] = _masked_mean(kl_penalty(rollout, old, "k3"), mask)
    return out


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
    return out
