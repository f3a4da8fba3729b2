"""DAPO hooks (rlkit.recipes.dapo) on hand-made batches, and the recipe's config wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config
from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.recipes.dapo import DAPOHooks, FilterSettings, filter_values, hooks, informative_rows
from rlkit.rewards import build_reward_manager, overlong_penalty
from rlkit.trainer.hooks import load_hooks


def scored(uids: list[str], scores: list[float], lengths: list[int], width: int = 8) -> Batch:
    """Rows as the trainer has them after scoring: uid, response_mask, seq_score."""
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()
    return Batch(
        tensors={
            "response_mask": mask,
            "seq_score": torch.tensor(scores, dtype=torch.float32),
            "row": torch.arange(len(uids)),
        },
        non_tensors={"uid": np.array(uids, dtype=object)},
    )


def test_informative_rows_keeps_exactly_the_groups_that_vary() -> None:
    uids = np.array(["a", "a", "a", "b", "b", "c", "d", "d", "e", "e"], dtype=object)
    values = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0 + 1e-7, -1.0, 1.0])
    keep = informative_rows(uids, values)
    # a varies, b ties, c is a singleton (kept, as verl), d differs by rounding noise only, e varies
    assert keep.tolist() == [True, True, True, False, False, True, False, False, True, True]


def test_filter_batch_drops_degenerate_groups_and_keeps_row_order() -> None:
    batch = scored(["a", "a", "b", "b", "c", "c"], [1.0, 0.0, 0.0, 0.0, 0.0, 1.0], [3, 3, 3, 3, 3, 3])
    dapo = DAPOHooks()
    dapo.settings = FilterSettings(enable=True, metric="score")
    kept = dapo.filter_batch(batch)
    assert kept["row"].tolist() == [0, 1, 4, 5]
    assert dapo.dropped is not None and dapo.dropped["row"].tolist() == [2, 3]


def test_disabled_filter_keeps_everything_in_one_round() -> None:
    cfg = to_dataclass(load_config("dapo", overrides=["algo.filter_groups.enable=false"]))
    dapo = DAPOHooks()
    dapo.settings = FilterSettings.from_config(cfg)
    batch = scored(["a", "a"], [0.0, 0.0], [2, 2])
    assert len(dapo.filter_batch(batch)) == 2
    assert dapo.max_generation_rounds(cfg) == 1


def test_score_metric_takes_the_overlong_penalty_off() -> None:
    # max 8, buffer 4: lengths 5 and 7 get penalties -0.25 and -0.75; both responses scored 1.0
    shaping = (8, 4, 1.0)
    penalties = overlong_penalty([5, 7], *shaping)
    batch = scored(["a", "a"], (torch.tensor([1.0, 1.0]) + penalties).tolist(), [5, 7])
    unshaped = FilterSettings(enable=True, metric="score", overlong=shaping)
    shaped = FilterSettings(enable=True, metric="seq_reward", overlong=shaping)
    assert filter_values(batch, unshaped) == pytest.approx([1.0, 1.0])
    assert filter_values(batch, shaped) == pytest.approx([0.75, 0.25])
    # the same group is degenerate by its score, informative by its shaped reward
    assert not informative_rows(batch["uid"], filter_values(batch, unshaped)).any()
    assert informative_rows(batch["uid"], filter_values(batch, shaped)).all()


def test_metric_from_a_column_and_unknown_metric() -> None:
    batch = scored(["a", "a"], [0.0, 0.0], [2, 2])
    batch.set("acc", np.array([True, False], dtype=object))
    assert filter_values(batch, FilterSettings(True, "acc")).tolist() == [1.0, 0.0]
    with pytest.raises(UserError, match="filter_groups.metric='nope'"):
        filter_values(batch, FilterSettings(True, "nope"))


def test_on_exhausted_tops_up_with_the_last_rounds_dropped_groups() -> None:
    dapo = DAPOHooks()
    dapo.settings = FilterSettings(enable=True, metric="score")
    dapo.filter_batch(scored(["a", "a", "b", "b", "c", "c"], [1.0, 0.0, 0.0, 0.0, 1.0, 1.0], [1] * 6))
    filler = dapo.on_exhausted(rounds=3, kept=2, wanted=3)
    assert filler is not None and filler["row"].tolist() == [2, 3]  # one prompt: group b
    assert dapo.before_update(None, filler) == {"dapo/prompts_topped_up": 1.0}
    assert dapo.before_update(None, filler) == {"dapo/prompts_topped_up": 0.0}  # reset per step


def test_recipe_config_is_dapo() -> None:
    cfg = to_dataclass(load_config("dapo"))
    assert (cfg.actor.clip_ratio_low, cfg.actor.clip_ratio_high, cfg.actor.clip_ratio_c) == (0.2, 0.28, 10.0)
    assert cfg.actor.loss_agg_mode == "token-mean" and cfg.algo.advantage == "grpo"
    assert not cfg.actor.use_kl_loss and not cfg.algo.use_kl_in_reward
    assert cfg.algo.filter_groups.enable and cfg.algo.filter_groups.max_num_gen_batches == 10
    assert cfg.reward.manager == "dapo" and cfg.reward.overlong.enable
    assert isinstance(load_hooks(cfg.hooks), DAPOHooks) and isinstance(hooks(), DAPOHooks)
    assert DAPOHooks().max_generation_rounds(cfg) == 10


def test_recipe_overlong_penalty_values() -> None:
    cfg = to_dataclass(load_config("dapo", overrides=["data.max_response_length=16"]))
    overlong = cfg.reward.overlong
    manager = build_reward_manager(
        cfg.reward.manager,
        overlong_enable=overlong.enable,
        overlong_buffer_len=overlong.buffer_len,
        overlong_penalty_factor=overlong.penalty_factor,
    )
    lengths = [4, 8, 10, 12, 16]
    with manager:
        out = manager(["7"] * 5, ["7"] * 5, ["arith"] * 5, [None] * 5, lengths, cfg.data.max_response_length)
    # buffer 8 of 16: no penalty up to 8 tokens, then linear down to -1 at 16; each answer scores 1
    assert out.scores.tolist() == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.0])
    assert out.extra["overlong_reward"] == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0])
