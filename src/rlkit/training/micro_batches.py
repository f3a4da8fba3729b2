"""Token-budget micro-batches and padding-free packing of verl's padded RL batch.

A rank's batch is split into micro-batches of at most ``budget`` real tokens (sum of the attention
mask), never splitting a sample; a sample longer than the budget goes alone. Every rank must run the
same number of forward passes (each FSDP forward all-gathers parameters), so the count is agreed over
ranks: a rank that needs fewer splits its fullest micro-batches further, and when it has run out of
samples to split it runs padding micro-batches (a copy of one sample whose loss is scaled by zero).

Packing lays the real tokens of a micro-batch's rows end to end (``input_ids_T``, ``position_ids_T``,
``cu_seqlens``) and records, for every response token, the packed position that predicts it (the
token before it: padded position ``P + t - 1``, as verl) so the LM head runs on those rows only.

Shape legend: B = rows of the batch, L = P + R padded sequence length, P = prompt length,
R = response length, T = packed real tokens, N = response tokens (real ones) of a micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PackedMicroBatch:
    """One micro-batch with padding removed.

    Attributes:
        rows: indices into the rank's batch of the rows packed here (sorted).
        input_ids_T, position_ids_T: packed token ids and positions.
        cu_seqlens: (len(rows) + 1,) int32 offsets of the packed sequences.
        gather_idx_N: packed positions whose hidden state predicts a response token.
        labels_N: the response tokens predicted there.
        resp_row_N, resp_col_N: where each of the N values goes in a (len(rows), R) tensor.
        num_tokens: real tokens in the micro-batch (T).
        is_padding: a filler micro-batch that only keeps the ranks' collectives in step.
    """

    rows: list[int]
    input_ids_T: torch.Tensor
    position_ids_T: torch.Tensor
    cu_seqlens: torch.Tensor
    gather_idx_N: torch.Tensor
    labels_N: torch.Tensor
    resp_row_N: torch.Tensor
    resp_col_N: torch.Tensor
    num_tokens: int
    is_padding: bool = False

    def to(self, device: torch.device) -> PackedMicroBatch:
        move = {
            k: getattr(self, k).to(device, non_blocking=True)
            for k in (
                "input_ids_T",
                "position_ids_T",
                "cu_seqlens",
                "gather_idx_N",
                "labels_N",
                "resp_row_N",
                "resp_col_N",
            )
        }
        return PackedMicroBatch(
            rows=self.rows, num_tokens=self.num_tokens, is_padding=self.is_padding, **move
        )

    def scatter(self, values_N: torch.Tensor, response_len: int) -> torch.Tensor:
        """Place per-response-token values into a dense (len(rows), R) tensor, zeros elsewhere.

        Differentiable in ``values_N``.

        Shape:
            values_N: (N, ...). Returns (len(rows), R, ...) in the dtype of ``values_N``.
        """
        out = values_N.new_zeros(len(self.rows), response_len, *values_N.shape[1:])
        return out.index_put((self.resp_row_N, self.resp_col_N), values_N)


def partition_by_tokens(lengths: list[int], budget: int, min_parts: int = 1) -> list[list[int]]:
    """Group sample indices into parts of at most ``budget`` tokens (first-fit decreasing).

    A sample longer than the budget gets a part of its own. When fewer than ``min_parts`` parts
    result, the fullest parts holding two or more samples are halved until there are ``min_parts``
    or nothing is left to split (then fewer parts come back; the caller pads). Splitting only
    shrinks parts, so the budget still holds.

    Args:
        lengths: real-token count of each sample.
        budget: most tokens per part (> 0).
        min_parts: the fewest parts wanted.

    Returns:
        Parts as sorted lists of sample indices, ordered by their first index.
    """
    if budget <= 0:
        raise ValueError(f"micro-batch token budget must be positive, got {budget}")
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for b, load in enumerate(loads):
            if load + lengths[i] <= budget:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:
            bins.append([i])
            loads.append(lengths[i])
    while len(bins) < min_parts:
        splittable = [b for b in range(len(bins)) if len(bins[b]) > 1]
        if not splittable:
            break
        b = max(splittable, key=lambda k: (loads[k], -k))
        members = sorted(bins[b], key=lambda j: -lengths[j])
        halves = (members[0::2], members[1::2])
        bins[b] = halves[0]
        loads[b] = sum(lengths[j] for j in halves[0])
        bins.append(halves[1])
        loads.append(sum(lengths[j] for j in halves[1]))
    parts = [sorted(b) for b in bins]
    return sorted(parts, key=lambda p: p[0])


def pack_rows(
    input_ids_BL: torch.Tensor,
    attention_mask_BL: torch.Tensor,
    position_ids_BL: torch.Tensor | None,
    response_len: int,
    rows: list[int],
    *,
    is_padding: bool = False,
) -> PackedMicroBatch:
    """Pack the real tokens of ``rows`` and locate the response tokens' predicting positions.

    Rows must be contiguous runs of real tokens (left-padded prompt followed by a right-padded
    response, verl's layout) and every prompt must hold at least one real token.

    Shape:
        input_ids_BL, attention_mask_BL, position_ids_BL: (B, L) with L = P + R, R = ``response_len``.
    """
    idx = torch.tensor(rows, dtype=torch.long, device=input_ids_BL.device)
    ids = input_ids_BL.index_select(0, idx)
    keep = attention_mask_BL.index_select(0, idx).bool()
    prompt_len = ids.shape[1] - response_len
    if prompt_len < 1:
        raise ValueError(f"batch has no prompt columns (L={ids.shape[1]}, R={response_len})")
    if position_ids_BL is None:
        positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
    else:
        positions = position_ids_BL.index_select(0, idx)
    # Two nonzero calls, then gathers by flat index (a boolean-mask index runs its own nonzero).
    width = ids.shape[1]
    keep_T = keep.flatten().nonzero().squeeze(1)
    packed_pos = keep.flatten().long().cumsum(0) - 1
    # Response token t is predicted by the token before it; a response token with no real token
    # before it (an empty prompt) has nothing to predict it from and stays masked out.
    valid = keep[:, prompt_len:] & keep[:, prompt_len - 1 : -1]
    resp_row, resp_col = valid.nonzero(as_tuple=True)
    at_N = resp_row * width + resp_col + prompt_len  # flat index of each response token
    lengths = keep.sum(-1)
    return PackedMicroBatch(
        rows=list(rows),
        input_ids_T=ids.flatten().index_select(0, keep_T),
        position_ids_T=positions.flatten().index_select(0, keep_T),
        cu_seqlens=F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32),
        gather_idx_N=packed_pos.index_select(0, at_N - 1),
        labels_N=ids.flatten().index_select(0, at_N),
        resp_row_N=resp_row,
        resp_col_N=resp_col,
        num_tokens=int(lengths.sum().item()),
        is_padding=is_padding,
    )


def micro_batch_rows(
    attention_mask_BL: torch.Tensor, budget: int, num_parts: int
) -> list[tuple[list[int], bool]]:
    """Rows of each micro-batch and whether it is padding, for exactly ``num_parts`` micro-batches.

    ``num_parts`` is the count agreed over ranks (at least this rank's own need, see
    :func:`count_micro_batches`); missing parts become padding micro-batches of row 0.
    """
    lengths = attention_mask_BL.sum(-1).tolist()
    parts = partition_by_tokens([int(n) for n in lengths], budget, min_parts=num_parts)
    if len(parts) > num_parts:
        raise ValueError(f"{len(parts)} micro-batches needed but only {num_parts} agreed over ranks")
    plan = [(p, False) for p in parts]
    plan += [([0], True)] * (num_parts - len(parts))
    return plan


def count_micro_batches(attention_mask_BL: torch.Tensor, budget: int) -> int:
    """How many micro-batches this rank needs under the token budget (before agreeing over ranks)."""
    lengths = [int(n) for n in attention_mask_BL.sum(-1).tolist()]
    return len(partition_by_tokens(lengths, budget))
