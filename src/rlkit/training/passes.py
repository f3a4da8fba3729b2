"""Micro-batch loops shared by the roles: plan over ranks, pack, and forward-only passes.

Shape legend: B = rows of the rank's batch, R = response length, L = P + R.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlkit.data.batch import Batch
from rlkit.training.distributed import all_reduce_max
from rlkit.training.engine_base import MicroBatchLoop, MicroBatchRunner
from rlkit.training.micro_batches import PackedMicroBatch, count_micro_batches, micro_batch_rows, pack_rows

#: the loop of a module every rank holds whole (the reference model, a teacher)
PLAIN_LOOP = MicroBatchLoop()


def response_len(batch: Batch) -> int:
    """R, the width of the batch's ``responses`` column."""
    return int(batch.tensors["responses"].shape[1])


def require_columns(batch: Batch, names: tuple[str, ...] | list[str], what: str) -> None:
    """Raise a ValueError naming the missing columns (a trainer bug, not a user mistake)."""
    missing = [n for n in names if n not in batch.tensors]
    if missing:
        raise ValueError(f"{what} needs batch columns {missing}; the batch has {batch.keys()}")


def mini_batches(batch: Batch, num_mini_batches: int, *, shuffle: bool, seed: int) -> list[Batch]:
    """The rank's batch cut into ``num_mini_batches`` parts (after a seeded shuffle when asked)."""
    if num_mini_batches < 1 or len(batch) < num_mini_batches:
        raise ValueError(f"cannot cut {len(batch)} rows into {num_mini_batches} mini-batches on this rank")
    if shuffle:
        batch = batch.reorder(torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed)))
    return batch.chunk(num_mini_batches)


def temperature_of(batch: Batch, temperature: float | None) -> float:
    """The explicit temperature, else ``batch.meta["temperature"]``, else 1.0."""
    if temperature is not None:
        return float(temperature)
    return float(batch.meta.get("temperature", 1.0))


def packed_micro_batches(
    batch: Batch, budget: int, device: torch.device, at_least: int = 1
) -> list[PackedMicroBatch]:
    """The batch's micro-batches under a token budget, packed and on ``device``.

    The count is agreed over ranks (one small all-reduce), so every rank gets the same number of
    micro-batches; this is a collective and all ranks must call it together. All micro-batches are
    packed and sent to the device up front, so no host-to-device copy waits in the middle of the
    compute loop. ``at_least``: the fewest micro-batches (an engine's ``min_micro_batches``; rows
    cut finer, then padding micro-batches).
    """
    mask = batch.tensors["attention_mask"]
    num = all_reduce_max(max(count_micro_batches(mask, budget), at_least), device)
    positions = batch.tensors.get("position_ids")
    if positions is not None and positions.dim() != 2:
        raise ValueError(
            f"position_ids must be (B, L); got shape {tuple(positions.shape)} (mrope is not supported)"
        )
    return [
        pack_rows(
            batch.tensors["input_ids"], mask, positions, response_len(batch), rows, is_padding=is_padding
        ).to(device)
        for rows, is_padding in micro_batch_rows(mask, budget, num)
    ]


def rows_on(mb: PackedMicroBatch, device: torch.device) -> torch.Tensor:
    """The micro-batch's row indices as a long tensor on ``device``."""
    return torch.tensor(mb.rows, dtype=torch.long).to(device, non_blocking=True)


@torch.no_grad()
def response_logprobs(
    module: nn.Module,
    batch: Batch,
    *,
    temperature: float,
    with_entropy: bool,
    budget: int,
    chunk_tokens: int,
    device: torch.device,
    sum_pi_squared: torch.Tensor | None = None,
    runner: MicroBatchRunner = PLAIN_LOOP,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) of every response token, in micro-batches; padding gets 0.

    Args:
        module: a sharded :class:`rlkit.training.heads.PackedPolicy`.
        batch: the rank's batch (``input_ids``, ``attention_mask``, ``responses``, optionally ``position_ids``).
        sum_pi_squared: a (B, R) CPU tensor to fill with ``sum_v pi(v)^2`` per position, or None.
        runner: the training engine that holds ``module`` (its micro-batch loop or pipeline schedule).

    Returns:
        log-probs (B, R) fp32 on the CPU and entropies (B, R) fp32 or None.
    """
    num_rows, width = len(batch), response_len(batch)
    # Results stay on the device until the end: a host copy per micro-batch would stall the loop.
    logp = torch.zeros(num_rows, width, dtype=torch.float32, device=device)
    entropy = torch.zeros(num_rows, width, dtype=torch.float32, device=device) if with_entropy else None
    squares = None if sum_pi_squared is None else torch.zeros_like(logp)

    def forward(mb: PackedMicroBatch) -> Any:
        return module(
            mb.input_ids_T,
            mb.position_ids_T,
            mb.cu_seqlens,
            mb.gather_idx_N,
            mb.labels_N,
            temperature=temperature,
            with_entropy=with_entropy,
            chunk_tokens=chunk_tokens,
            with_sum_pi_squared=squares is not None,
        )

    def consume(mb: PackedMicroBatch, out: Any) -> None:
        lp_N, ent_N, *extra = out
        if mb.is_padding:
            return
        rows = rows_on(mb, device)
        logp[rows] = mb.scatter(lp_N.float(), width)
        if entropy is not None and ent_N is not None:
            entropy[rows] = mb.scatter(ent_N.float(), width)
        if squares is not None:
            squares[rows] = mb.scatter(extra[0].float(), width)

    runner.run_micro_batches(
        packed_micro_batches(batch, budget, device, runner.min_micro_batches),
        forward,
        consume,
        backward=False,
    )
    logp_c, entropy_c, squares_c = runner.from_last_stage(
        (logp.cpu(), None if entropy is None else entropy.cpu(), None if squares is None else squares.cpu())
    )
    if sum_pi_squared is not None and squares_c is not None:
        sum_pi_squared.copy_(squares_c)
    return logp_c, entropy_c


@torch.no_grad()
def response_values(
    module: nn.Module,
    batch: Batch,
    *,
    budget: int,
    device: torch.device,
    runner: MicroBatchRunner = PLAIN_LOOP,
) -> torch.Tensor:
    """Values of every response token (read at the position before it, as verl); padding gets 0.

    Returns:
        values (B, R) fp32 on the CPU.
    """
    width = response_len(batch)
    values = torch.zeros(len(batch), width, dtype=torch.float32, device=device)

    def forward(mb: PackedMicroBatch) -> Any:
        return module(mb.input_ids_T, mb.position_ids_T, mb.cu_seqlens, mb.gather_idx_N)

    def consume(mb: PackedMicroBatch, v_N: Any) -> None:
        if not mb.is_padding:
            values[rows_on(mb, device)] = mb.scatter(v_N.float(), width)

    runner.run_micro_batches(
        packed_micro_batches(batch, budget, device, runner.min_micro_batches),
        forward,
        consume,
        backward=False,
    )
    return runner.from_last_stage(values.cpu())
