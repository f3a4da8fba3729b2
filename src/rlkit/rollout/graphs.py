"""CUDA-graph capture of the decode step, and asynchronous device-to-host result transfer.

Graph capture is the only CUDA-specific piece of the native engine (CUDA graphs have no
device-neutral API in torch); it goes through :mod:`rlkit.hardware.graphs`, and everything else
runs on any device.

A decode step at small batch is bound by kernel-launch overhead (hundreds of small kernels per
token), so it is captured once per batch-size bucket and replayed. All inputs and outputs of a
captured step are persistent buffers (slot tokens, positions, the KV cache, the logits buffer):
replay reads and writes the same memory, and weights updated in place stay visible to it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from rlkit.hardware.device import synchronize
from rlkit.hardware.graphs import DeviceGraph, capture_graph, graph_pool, side_stream


def batch_buckets(num_slots: int) -> list[int]:
    """Batch sizes to capture: powers of two up to 32, then every 32, then ``num_slots``."""
    sizes = {b for b in (1, 2, 4, 8, 16, 32) if b < num_slots}
    sizes.update(range(64, num_slots, 32))
    sizes.add(num_slots)
    return sorted(sizes)


def bucket_for(rows: int, buckets: list[int]) -> int:
    """The smallest bucket holding ``rows`` rows."""
    for b in buckets:
        if b >= rows:
            return b
    raise ValueError(f"{rows} rows exceed the largest bucket {buckets[-1]}")


class DecodeGraphs:
    """One captured decode step per bucket, sharing one memory pool."""

    def __init__(self, step: Callable[[int], None], buckets: list[int], device: torch.device) -> None:
        """Capture ``step(b)`` (the decode step on rows 0..b-1, writing persistent buffers).

        Warm-up runs write keys/values of idle rows into their own slots, so capture before any
        sequence holds a slot (the engine captures right after allocating the cache).
        """
        self.graphs: dict[int, DeviceGraph] = {}
        self.buckets = buckets
        with side_stream(device):
            for b in buckets:  # warm-up: lazy initialisation (cuBLAS handles, autotuning) outside capture
                step(b)
        pool = graph_pool(device)
        for b in sorted(buckets, reverse=True):  # largest first, so smaller ones reuse its pool blocks
            self.graphs[b] = capture_graph(functools.partial(step, b), device, pool)
        synchronize(device)

    def replay(self, b: int) -> None:
        self.graphs[b].replay()


class HostCopy:
    """Device tensors copied into pinned host memory without blocking; ``get`` waits for them."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self._event: torch.Event | None = None
        if tensors[0].device.type == "cpu":
            self._host = tensors
            return
        self._host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        for host, dev in zip(self._host, tensors, strict=True):
            host.copy_(dev, non_blocking=True)
        self._event = torch.Event(device=tensors[0].device)
        self._event.record()

    def get(self) -> list[list[Any]]:
        if self._event is not None:
            self._event.synchronize()
        return [t.tolist() for t in self._host]


def to_device(values: list[int] | list[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list as a device tensor, through pinned memory so the copy does not block the host."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)
