"""Device graphs and side streams: the pieces of CUDA-graph capture that have no device-neutral torch API.

The native rollout engine captures its decode step with these instead of calling ``torch.cuda``
itself. They work on CUDA and on ROCm (whose torch builds map the same API onto HIP graphs);
on any other device :func:`graphs_supported` is False and the others raise, so callers check
first and fall back to eager execution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

DeviceGraph = torch.cuda.CUDAGraph
"""A captured sequence of device work, replayed with ``graph.replay()``."""


def graphs_supported(device: torch.device) -> bool:
    """Whether work on ``device`` can be captured into a :data:`DeviceGraph` (CUDA and ROCm GPUs)."""
    return device.type == "cuda" and torch.cuda.is_available()


def _require(device: torch.device) -> None:
    if not graphs_supported(device):
        raise RuntimeError(f"device graphs need a CUDA or ROCm GPU, not {device}")


@contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """Run the block on a fresh stream of ``device``, ordered after and before the current stream's work.

    Graph warm-up must run off the default stream (lazy initialisation such as cuBLAS handles
    would otherwise be recorded into the capture); the two waits keep it ordered with the work
    around it.
    """
    _require(device)
    stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream(device).wait_stream(stream)


def graph_pool(device: torch.device) -> Any:
    """A memory-pool handle that several captures share (later, smaller ones reuse its blocks)."""
    _require(device)
    return torch.cuda.graph_pool_handle()


def capture_graph(fn: Callable[[], None], device: torch.device, pool: Any = None) -> DeviceGraph:
    """Capture the device work ``fn()`` enqueues into a graph (``fn`` runs once, during the capture).

    Every tensor ``fn`` reads or writes must stay allocated at the same address while the graph
    is replayed: replay repeats the recorded kernels on the recorded memory.
    """
    _require(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        fn()
    return graph
