"""PromptSampler: seeded epochs, drop_last, and exact resume across an epoch boundary."""

from __future__ import annotations

import pytest

from rlkit.data.sampler import PromptSampler
from rlkit.errors import UserError


def _take(sampler: PromptSampler, n: int) -> list[list[int]]:
    return [sampler.next_batch() for _ in range(n)]


def test_each_epoch_is_a_seeded_permutation() -> None:
    sampler = PromptSampler(10, 5, seed=3)
    epoch0, epoch1 = _take(sampler, 2), _take(sampler, 2)
    assert sorted(sum(epoch0, [])) == list(range(10)) and sorted(sum(epoch1, [])) == list(range(10))
    assert epoch0 != epoch1 and sampler.epoch == 1
    assert _take(PromptSampler(10, 5, seed=3), 4) == epoch0 + epoch1
    assert _take(PromptSampler(10, 5, seed=4), 2) != epoch0


def test_drop_last_and_no_shuffle() -> None:
    dropping = PromptSampler(10, 4, seed=0)
    assert dropping.batches_per_epoch == 2 and all(len(b) == 4 for b in _take(dropping, 6))
    keeping = PromptSampler(10, 4, seed=0, shuffle=False, drop_last=False)
    assert _take(keeping, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 1, 2, 3]]


@pytest.mark.parametrize("stop_after", [0, 1, 2, 3, 5])
def test_resume_continues_with_the_same_batches(stop_after: int) -> None:
    # 3 batches per epoch: stopping after 2 or 3 puts the resume at the end of an epoch / across it
    reference = PromptSampler(13, 4, seed=9)
    expected = _take(reference, stop_after + 8)
    first = PromptSampler(13, 4, seed=9)
    assert _take(first, stop_after) == expected[:stop_after]
    state = first.state_dict()
    resumed = PromptSampler(13, 4, seed=9)
    resumed.load_state_dict(state)
    assert _take(resumed, 8) == expected[stop_after:]
    assert iter(resumed).__next__() == reference.next_batch()


def test_resume_refuses_other_settings_and_bad_sizes() -> None:
    state = PromptSampler(13, 4, seed=9).state_dict()
    with pytest.raises(UserError, match="num_items"):
        PromptSampler(14, 4, seed=9).load_state_dict(state)
    with pytest.raises(UserError, match="seed"):
        PromptSampler(13, 4, seed=1).load_state_dict(state)
    with pytest.raises(UserError, match="only 3"):
        PromptSampler(3, 4, seed=0)
    with pytest.raises(UserError, match="at least 1"):
        PromptSampler(3, 0, seed=0)
    assert PromptSampler(3, 4, seed=0, drop_last=False).next_batch() != []
