"""Reward managers, the builder, DAPO's overlong penalty and token-level placement."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import torch

from rlkit.errors import UserError
from rlkit.rewards import managers
from rlkit.rewards.managers import (
    BatchRewardManager,
    DAPORewardManager,
    NaiveRewardManager,
    build_reward_manager,
    overlong_penalty,
    reward_managers,
    token_level_scores,
)

CUSTOM = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):
    if solution_str == "raise":
        raise ValueError("bad response")
    if solution_str == "nan":
        return float("nan")
    if solution_str == "nodict":
        return {"acc": True}
    return {"score": float(solution_str == ground_truth) + bonus, "split": (extra_info or {}).get("split")}

def batched(data_sources, solution_strs, ground_truths, extra_infos):
    return [float(s == g) for s, g in zip(solution_strs, ground_truths)]

def batched_wrong_length(data_sources, solution_strs, ground_truths, extra_infos):
    return [1.0]
"""


@pytest.fixture(scope="module")
def custom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("managers") / "custom_reward.py"
    path.write_text(CUSTOM)
    return path


def batch_args(responses: list[str], truths: list[object], sources: list[str] | None = None) -> tuple:
    n = len(responses)
    return responses, truths, sources or ["arith"] * n, [None] * n, [len(r) for r in responses], 32


def test_docstring_examples() -> None:
    failed, attempted = doctest.testmod(managers)
    assert attempted > 0 and failed == 0


def test_naive_with_builtin_scorers_in_process() -> None:
    with NaiveRewardManager() as manager:
        out = manager(
            ["1 + 1 = 2", "#### 7", r"\boxed{\frac12}", "no", "<answer>2*3</answer>"],
            ["2", "7", "0.5", "3", {"target": 6, "numbers": [2, 3]}],
            ["arith", "openai/gsm8k", "math", "arith", "countdown"],
            [None, {"split": "test"}, None, None, None],
            torch.tensor([5, 6, 7, 2, 9]),
            16,
        )
    assert out.scores.dtype == torch.float32 and out.scores.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    # Extras come from the dict results (arith) and are None where a result had no such key.
    assert out.extra == {"acc": [True, None, None, False, None], "pred": ["2", None, None, None, None]}
    assert out.metrics["reward/errors"] == 0.0 and out.metrics["reward/timeouts"] == 0.0


def test_unknown_data_source_is_a_user_error_before_scoring() -> None:
    with NaiveRewardManager() as manager, pytest.raises(UserError, match="'nope'.*known"):
        manager(*batch_args(["1"], ["1"], ["nope"]))


def test_mismatched_lengths_are_a_bug() -> None:
    with NaiveRewardManager() as manager, pytest.raises(ValueError, match="differ in length"):
        manager(["a", "b"], ["1"], ["arith"] * 2, [None] * 2, [1, 1], 8)


def test_custom_function_through_the_pool(custom_file: Path) -> None:
    manager = build_reward_manager(custom_path=str(custom_file), num_workers=0, reward_kwargs={"bonus": 0.5})
    # user code: never in-process, and in parallel (a hung sample costs one timeout per worker)
    assert isinstance(manager, NaiveRewardManager)
    assert manager.pool.num_workers == managers.default_custom_workers() >= 1
    try:
        responses = ["a", "raise", "b", "nan", "nodict"]
        out = manager(
            responses, ["a", "x", "c", "x", "x"], ["mine"] * 5, [{"split": "train"}] + [None] * 4, [1] * 5, 8
        )
    finally:
        manager.close()
    assert out.scores.tolist() == [1.5, 0.0, 0.5, 0.0, 0.0]
    assert out.extra["split"] == ["train", None, None, None, None]
    assert out.metrics["reward/errors"] == 3.0  # the raise, the NaN and the dict without "score"
    kinds = {k: v for k, v in out.metrics.items() if k.startswith("reward/errors_")}
    assert kinds == {"reward/errors_raised": 1.0, "reward/errors_nan": 1.0, "reward/errors_no_score": 1.0}


def test_batch_manager(custom_file: Path) -> None:
    args = batch_args(["1", "2", "3", "4", "5"], ["1", "0", "3", "0", "5"])
    for workers in (0, 2):
        manager = build_reward_manager(
            "batch", custom_path=str(custom_file), custom_name="batched", num_workers=workers
        )
        assert isinstance(manager, BatchRewardManager)
        with manager:
            out = manager(*args)
        assert out.scores.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0] and out.metrics["reward/errors"] == 0.0
    with build_reward_manager(
        "batch", custom_path=str(custom_file), custom_name="batched_wrong_length"
    ) as manager:
        out = manager(*args)
    assert out.scores.tolist() == [0.0] * 5 and out.metrics["reward/errors"] == 5.0


def test_batch_manager_needs_a_function() -> None:
    with pytest.raises(UserError, match="batch"):
        build_reward_manager("batch")


def test_builder_rejects_unknown_manager() -> None:
    with pytest.raises(UserError, match="'prime'.*naive, batch, dapo"):
        build_reward_manager("prime")
    assert set(reward_managers) == {"naive", "batch", "dapo"}


def test_overlong_penalty_by_hand() -> None:
    # max 20, buffer 8 -> expected 12; factor 0.5: penalty = min(-(L - 12) / 8 * 0.5, 0)
    lengths = [0, 12, 13, 16, 20, 24]
    want = [0.0, 0.0, -0.0625, -0.25, -0.5, -0.75]
    got = overlong_penalty(lengths, max_response_length=20, buffer_len=8, penalty_factor=0.5)
    assert got.dtype == torch.float32 and got.tolist() == want
    assert overlong_penalty(torch.tensor(lengths), 20, 8, 0.5).tolist() == want
    with pytest.raises(ValueError):
        overlong_penalty(lengths, 20, 0, 1.0)
    with pytest.raises(ValueError):
        overlong_penalty(lengths, 20, 21, 1.0)


def test_dapo_manager_adds_the_penalty() -> None:
    manager = build_reward_manager(
        "dapo", overlong_enable=True, overlong_buffer_len=4, overlong_penalty_factor=1.0
    )
    assert isinstance(manager, DAPORewardManager)
    responses, truths = ["7", "7", "8", "7"], ["7", "7", "7", "7"]
    out = manager(responses, truths, ["arith"] * 4, [None] * 4, [10, 14, 15, 16], 16)
    # expected_len = 12: penalties 0, -0.5, -0.75, -1.0
    assert out.scores.tolist() == [1.0, 0.5, -0.75, 0.0]
    assert out.extra["overlong_reward"] == [0.0, -0.5, -0.75, -1.0]
    assert out.extra["overlong"] == [False, True, True, True]
    assert out.extra["acc"] == [True, True, False, True]
    assert out.metrics["reward/overlong_frac"] == 0.75
    with pytest.raises(UserError, match="buffer_len"):
        manager(responses, truths, ["arith"] * 4, [None] * 4, [1, 1, 1, 1], 3)
    off = build_reward_manager("dapo", overlong_enable=False)
    assert off(responses, truths, ["arith"] * 4, [None] * 4, [10, 14, 15, 16], 16).scores.tolist() == [
        1,
        1,
        0,
        1,
    ]


def test_token_level_scores() -> None:
    scores_B = torch.tensor([1.0, -2.0, 3.0, 4.0])
    mask_BR = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    out_BR = token_level_scores(scores_B, mask_BR)
    want = torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, -2.0], [0, 0, 0, 0], [0, 0, 4.0, 0]])
    assert out_BR.shape == (4, 4) and torch.equal(out_BR, want)
    # Row sums recover the scores of rows that have a valid token.
    assert out_BR.sum(1).tolist() == [1.0, -2.0, 0.0, 4.0]
    assert token_level_scores(scores_B, torch.zeros(4, 0)).shape == (4, 0)
    assert token_level_scores(scores_B.double(), mask_BR.bool()).dtype == torch.float64
    with pytest.raises(ValueError):
        token_level_scores(scores_B, mask_BR[:2])
