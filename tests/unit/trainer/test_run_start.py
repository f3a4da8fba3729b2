"""open_run's helpers: a data-order mismatch on resume names both ways out."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlkit.ckpt import ResumePoint
from rlkit.data.sampler import PromptSampler
from rlkit.errors import UserError
from rlkit.trainer.run_start import restore_sampler


def test_a_sampler_of_other_data_is_refused_with_the_way_to_a_new_run(tmp_path: Path) -> None:
    saved = PromptSampler(27, 4, seed=1)
    saved.next_batch()
    point = ResumePoint(tmp_path / "step_1", 1, {}, {"sampler": saved.state_dict()}, {})
    with pytest.raises(UserError, match="the checkpoint has num_items=27, this run has 4096") as err:
        restore_sampler(PromptSampler(4096, 4, seed=1), point)
    assert "the same data files" in str(err.value.hint) and "trainer.resume=never" in str(err.value.hint)
    same = PromptSampler(27, 4, seed=1)
    restore_sampler(same, point)
    assert same.position == 1
