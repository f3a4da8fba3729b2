"""Token-budget partitioning and padding-free packing of verl's padded RL batch."""

from __future__ import annotations

import random

import pytest
import torch

from rlkit.models.decoder import pack_padded
from rlkit.training.micro_batches import micro_batch_rows, pack_rows, partition_by_tokens


def _rl_batch(
    prompt_lens: list[int], resp_lens: list[int], p: int, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts + right-padded responses, like the rollout engine returns."""
    b = len(prompt_lens)
    ids = torch.randint(1, 100, (b, p + r), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(b, p + r, dtype=torch.long)
    for i, (pl, rl) in enumerate(zip(prompt_lens, resp_lens, strict=True)):
        mask[i, p - pl : p + rl] = 1
    return ids * mask, mask


def test_partition_respects_budget_and_covers_every_sample_once() -> None:
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 30))]
        budget = rng.randint(20, 80)
        parts = partition_by_tokens(lengths, budget)
        flat = sorted(i for p in parts for i in p)
        assert flat == list(range(len(lengths)))
        for p in parts:
            assert sum(lengths[i] for i in p) <= budget or len(p) == 1


def test_oversized_sample_goes_alone() -> None:
    parts = partition_by_tokens([5, 100, 5], budget=10)
    assert [1] in parts
    assert sorted(map(tuple, parts)) == [(0, 2), (1,)]


def test_min_parts_splits_fullest_parts_and_keeps_budget() -> None:
    lengths = [3, 3, 3, 3, 3, 3]
    assert len(partition_by_tokens(lengths, budget=100)) == 1
    parts = partition_by_tokens(lengths, budget=100, min_parts=4)
    assert len(parts) == 4
    assert sorted(i for p in parts for i in p) == list(range(6))
    # More parts than samples: as many as possible, the caller pads.
    assert len(partition_by_tokens([1, 1], budget=100, min_parts=5)) == 2


def test_micro_batch_rows_pads_to_the_agreed_count() -> None:
    mask = torch.ones(2, 4, dtype=torch.long)
    plan = micro_batch_rows(mask, budget=100, num_parts=3)
    assert [p for p, pad in plan if not pad] == [[0], [1]]
    assert [pad for _, pad in plan] == [False, False, True]
    with pytest.raises(ValueError):
        micro_batch_rows(mask, budget=4, num_parts=1)


def test_pack_rows_matches_pack_padded_and_finds_predicting_positions() -> None:
    p, r = 5, 4
    ids, mask = _rl_batch([3, 5, 1], [4, 2, 1], p, r)
    mb = pack_rows(ids, mask, None, r, [0, 1, 2])
    ref_ids, ref_pos, ref_cu, _ = pack_padded(ids, mask)
    assert torch.equal(mb.input_ids_T, ref_ids)
    assert torch.equal(mb.position_ids_T, ref_pos)
    assert torch.equal(mb.cu_seqlens, ref_cu)
    assert mb.num_tokens == int(mask.sum())
    # Every real response token is predicted by the packed token just before it.
    assert torch.equal(mb.input_ids_T[mb.gather_idx_N + 1], mb.labels_N)
    assert mb.labels_N.numel() == int(mask[:, p:].sum())
    dense = mb.scatter(mb.labels_N.float(), r)
    assert torch.equal(dense, (ids[:, p:] * mask[:, p:]).float())


def test_pack_rows_subset_and_given_position_ids() -> None:
    p, r = 4, 3
    ids, mask = _rl_batch([2, 4, 3], [3, 1, 2], p, r)
    positions = (mask.cumsum(-1) - 1).clamp(min=0) + 7  # any explicit positions are used as given
    mb = pack_rows(ids, mask, positions, r, [2, 0])
    assert mb.rows == [2, 0]
    assert torch.equal(mb.position_ids_T[:5], positions[2][mask[2].bool()])
    assert torch.equal(mb.scatter(mb.labels_N.float(), r), (ids[[2, 0], p:] * mask[[2, 0], p:]).float())


def test_empty_prompt_tokens_have_no_predictor() -> None:
    ids, mask = _rl_batch([0, 2], [2, 2], 2, 2)
    mb = pack_rows(ids, mask, None, 2, [0, 1])
    # Row 0's first response token has nothing before it; its second one is still predicted.
    assert mb.resp_row_N.tolist() == [0, 1, 1]
    assert mb.resp_col_N.tolist() == [1, 0, 1]


@pytest.mark.parametrize("seed", range(5))
def test_pack_rows_matches_a_row_by_row_reference(seed: int) -> None:
    # Random widths, masks (empty prompts and responses included) and row subsets, against the
    # definition written out one row and one token at a time.
    gen = random.Random(seed)
    for _ in range(20):
        b, p, r = gen.randint(1, 6), gen.randint(1, 5), gen.randint(1, 5)
        ids, mask = _rl_batch(
            [gen.randint(0, p) for _ in range(b)], [gen.randint(0, r) for _ in range(b)], p, r
        )
        rows = sorted(gen.sample(range(b), gen.randint(1, b)))
        mb = pack_rows(ids, mask, None, r, rows)
        packed, gather, labels, where = [], [], [], []
        for i, row in enumerate(rows):
            start = len(packed)
            real = [c for c in range(p + r) if mask[row, c]]
            packed += [int(ids[row, c]) for c in real]
            for t in range(r):
                c = p + t
                if mask[row, c] and mask[row, c - 1]:
                    gather.append(start + real.index(c - 1))
                    labels.append(int(ids[row, c]))
                    where.append((i, t))
        assert mb.input_ids_T.tolist() == packed
        assert mb.gather_idx_N.tolist() == gather
        assert mb.labels_N.tolist() == labels
        assert list(zip(mb.resp_row_N.tolist(), mb.resp_col_N.tolist(), strict=True)) == where
