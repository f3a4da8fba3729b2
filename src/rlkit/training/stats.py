"""Metric accumulation across micro-batches and ranks, exact however the batch is split.

Two kinds of metric: *shares* (a micro-batch loss already scaled as a share of the whole
mini-batch loss with the global-batch keywords of ``agg_loss``: the mini-batch value is their sum
over micro-batches, averaged over ranks) and *means* (a per-micro-batch average such as a clip
fraction, combined by weighting with the micro-batch's token count).

Values stay on the device until :meth:`MiniBatchStats.reduce`: reading a device scalar per
micro-batch would stall the host until the device catches up, between forward and backward.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from rlkit.training.distributed import world_size


class MiniBatchStats:
    """Collects one mini-batch's metrics on a rank; :meth:`reduce` combines them over ranks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._shares: dict[str, torch.Tensor] = {}
        self._means: dict[str, tuple[torch.Tensor, float]] = {}

    def _scalar(self, value: float | torch.Tensor) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.detach().to(self.device, torch.float64)
        # a fill kernel, not a host-to-device copy (which would wait for the queued work)
        return torch.full((), float(value), dtype=torch.float64, device=self.device)

    def add_share(self, name: str, value: float | torch.Tensor) -> None:
        total = self._shares.get(name)
        value_t = self._scalar(value)
        self._shares[name] = value_t if total is None else total + value_t

    def add_mean(self, name: str, value: float | torch.Tensor, weight: float) -> None:
        """Add a per-micro-batch mean ``value`` over ``weight`` tokens (a host number: no sync)."""
        weighted = self._scalar(value) * weight
        if name in self._means:
            total, total_weight = self._means[name]
            self._means[name] = (total + weighted, total_weight + weight)
        else:
            self._means[name] = (weighted, weight)

    def reduce(self, group: Any = None) -> dict[str, float]:
        """The mini-batch's metrics over all ranks, or those of ``group`` (one all-reduce and one host
        read; collective over them)."""
        share_keys, mean_keys = sorted(self._shares), sorted(self._means)
        parts = [self._shares[k] for k in share_keys]
        for k in mean_keys:
            total, weight = self._means[k]
            parts += [total, self._scalar(weight)]
        if not parts:
            return {}
        flat = torch.stack(parts)
        world = world_size() if group is None else dist.get_world_size(group)
        if dist.is_initialized() and world > 1:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        sums: list[float] = flat.tolist()
        out = {k: sums[i] / world for i, k in enumerate(share_keys)}
        base = len(share_keys)
        for j, k in enumerate(mean_keys):
            value, weight = sums[base + 2 * j], sums[base + 2 * j + 1]
            out[k] = value / weight if weight > 0 else 0.0
        return out


class RunningMeans:
    """Averages per-mini-batch metrics over the mini-batches and epochs of one update."""

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._values.setdefault(key, []).append(value)

    def means(self) -> dict[str, float]:
        """Mean of each metric; non-finite values (a skipped step's norm) are left out when others exist."""
        out = {}
        for key, values in self._values.items():
            finite = [v for v in values if math.isfinite(v)]
            out[key] = sum(finite) / len(finite) if finite else values[-1]
        return out
