"""Process-group helpers of the Megatron engine (:mod:`rlkit.training.megatron_engine`).

Which weights average over which data-parallel group, the distributed optimizer's shares, the
weights a replica's ranks each hold part of the gradient of, the last pipeline stage's group, and
coalesced collectives (one flat buffer per call).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def is_expert(param: nn.Parameter) -> bool:
    # Megatron marks expert-parallel weights allreduce=False: they average over the expert-DP group.
    return not getattr(param, "allreduce", True)


_flatten: Any = torch._utils._flatten_dense_tensors  # one buffer per all-reduce (untyped torch helpers)
_unflatten: Any = torch._utils._unflatten_dense_tensors


def all_gather(tensor: torch.Tensor, group: Any, size: int) -> list[torch.Tensor]:
    shards = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(shards, tensor.contiguous(), group=group)
    return shards


def all_reduce_coalesced(tensors: list[torch.Tensor], group: Any, *, average: bool = False) -> None:
    """Sum (or average) ``tensors`` in place over ``group`` in one all-reduce of a flat buffer."""
    size = dist.get_world_size(group)
    if not tensors or size == 1:
        return
    flat: torch.Tensor = _flatten(tensors)
    dist.all_reduce(flat, group=group)
    if average:
        flat.div_(size)
    for tensor, reduced in zip(tensors, _unflatten(flat, tensors), strict=True):
        tensor.copy_(reduced)


def broadcast_coalesced(tensors: list[torch.Tensor], src: int, group: Any) -> None:
    """``tensors`` of group rank ``src`` copied in place on every rank of ``group`` (one broadcast)."""
    flat: torch.Tensor = _flatten(tensors)
    dist.broadcast(flat, src=dist.get_global_rank(group, src), group=group)
    if src != dist.get_rank(group):
        for tensor, received in zip(tensors, _unflatten(flat, tensors), strict=True):
            tensor.copy_(received)


def last_stage_group() -> Any:
    """A process group of the ranks on the last pipeline stage (those that compute the losses).

    Collective over the world: every rank says whether it is on a last stage, then all create it.
    """
    from megatron.core import parallel_state as mpu

    flags: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, mpu.is_pipeline_last_stage())
    return dist.new_group(ranks=[r for r, last in enumerate(flags) if last])


def chunk_ends(chunk: int, chunks: int) -> tuple[bool, bool]:
    """Whether this rank's model chunk ``chunk`` of ``chunks`` holds the embedding / the final norm and head."""
    from megatron.core import parallel_state as mpu

    if chunks == 1:
        return mpu.is_pipeline_first_stage(), mpu.is_pipeline_last_stage()
    return (
        mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=chunk),
        mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=chunk),
    )


def tp_partial(module: nn.Module) -> list[nn.Parameter]:
    """Weights every TP rank holds whole while each rank's gradient is a part of theirs: the norms
    under sequence parallelism (Megatron's ``sequence_parallel`` mark) and the q / k norms."""
    return [
        p
        for name, p in module.named_parameters()
        if p.requires_grad
        and (getattr(p, "sequence_parallel", False) or "q_layernorm" in name or "k_layernorm" in name)
    ]


def dp_groups() -> dict[bool, Any]:
    """The data-parallel group of the dense weights (False) and of the experts (True)."""
    from megatron.core import parallel_state as mpu

    return {
        False: mpu.get_data_parallel_group(with_context_parallel=True),
        True: mpu.get_expert_data_parallel_group(),
    }


def share_out(params: list[nn.Parameter]) -> dict[tuple[bool, int], list[nn.Parameter]]:
    """The weights each data-parallel replica steps, by (experts?, its rank in the dense or the
    experts' group): the next largest to the least loaded, the same on every replica (their shards
    match). Groups of one replica have nothing to share."""
    shares: dict[tuple[bool, int], list[nn.Parameter]] = {}
    for expert, group in dp_groups().items():
        size = dist.get_world_size(group)
        if size == 1:
            continue
        load = [0] * size
        for param in sorted((p for p in params if is_expert(p) == expert), key=lambda p: -p.numel()):
            rank = load.index(min(load))
            shares.setdefault((expert, rank), []).append(param)
            load[rank] += param.numel()
    return shares
