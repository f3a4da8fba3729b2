"""Process-group plumbing for the training engine: one data-parallel mesh, small all-reduces.

The roles run inside worker processes that already have ``torch.distributed`` initialised (the
controller sets ``RANK``/``WORLD_SIZE`` and calls ``init_process_group``). When nothing is
initialised (a notebook, a benchmark, a unit test in one process), :func:`ensure_process_group`
starts a single-process group on an in-memory store, so the engine has one code path: FSDP2 over a
mesh of size 1 shards nothing and costs only its hooks.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from rlkit.hardware import device as hw

# Collectives inside the engine never wait forever: a peer that died surfaces as an error.
DEFAULT_TIMEOUT = timedelta(minutes=30)


def ensure_process_group(timeout: timedelta = DEFAULT_TIMEOUT) -> tuple[int, int]:
    """Return ``(rank, world_size)``, starting a single-process group if none exists.

    The single-process group uses a ``HashStore`` (no sockets, no env variables needed) and the
    device layer's backend (gloo on CPU, NCCL on CUDA).
    """
    # NCCL binds a rank to the current device: make it this rank's before any collective.
    hw.set_device(training_device())
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError(
                "WORLD_SIZE > 1 but torch.distributed is not initialised: the worker must call "
                "init_process_group before building a training role"
            )
        dist.init_process_group(
            backend=hw.dist_backend(),
            store=dist.HashStore(),  # type: ignore[attr-defined]
            rank=0,
            world_size=1,
            timeout=timeout,
        )
    return dist.get_rank(), dist.get_world_size()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def training_device() -> torch.device:
    """The device this rank trains on (its local accelerator, or the CPU).

    A worker that sees one device (a Ray actor with its own visible-device variable) uses index 0
    whatever its ``LOCAL_RANK``; a process that sees the whole node (torchrun) uses ``LOCAL_RANK``.
    """
    return hw.current_device(local_rank() if hw.device_count() > 1 else 0)


def dp_mesh() -> DeviceMesh:
    """A 1-D data-parallel mesh over all ranks of the default group (FSDP shards over it)."""
    _, world = ensure_process_group()
    return init_device_mesh(hw.torch_device_name(), (world,), mesh_dim_names=("dp",))


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks in one collective (fp64, so token counts stay exact).

    One rank returns them as they are: a round trip through the device would make the host wait
    for every kernel already queued there."""
    if world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value: int, device: torch.device) -> int:
    """The maximum of an integer over all ranks (one rank: ``value``, without a device round trip)."""
    if world_size() == 1:
        return int(value)
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1
