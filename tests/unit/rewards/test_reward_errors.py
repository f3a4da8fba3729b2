"""Rewards that fail are errors of a kind, counted per step, printed in one line, or raised.

verl's contract: a finite float/int/bool, or a dict with ``"score"``. One manager (one worker)
serves the module; ``on_error`` is switched on it per test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rlkit.errors import UserError
from rlkit.rewards import outcomes
from rlkit.rewards.managers import NaiveRewardManager, build_reward_manager

RETURNS = """
import math

class Answer:
    pass

VALUES = {
    "float": 0.5, "int": 3, "bool": True, "dict": {"score": 2, "acc": True},
    "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "string": "1", "none": None,
    "list": [1.0], "nodict": {"acc": True}, "dict_nan": {"score": math.nan}, "dict_str": {"score": "1"},
}

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if data_source == "own_class":
        return Answer()
    if data_source == "raise":
        raise KeyError("no answer found")
    return VALUES[data_source]
"""

KINDS = ["float", "int", "bool", "dict", "nan", "inf", "ninf", "string", "none", "list", "nodict"]
KINDS += ["dict_nan", "dict_str", "own_class", "raise"]


def score(manager: NaiveRewardManager, sources: list[str]):  # type: ignore[no-untyped-def]
    n = len(sources)
    return manager(["r"] * n, ["t"] * n, sources, [None] * n, [1] * n, 8)


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NaiveRewardManager]:
    path = tmp_path_factory.mktemp("errors") / "returns.py"
    path.write_text(RETURNS)
    built = build_reward_manager(custom_path=str(path), num_workers=1, timeout_s=2.0)
    assert isinstance(built, NaiveRewardManager)
    with built:
        yield built


def test_each_kind_is_an_error_counted_and_printed(
    manager: NaiveRewardManager, capfd: pytest.CaptureFixture[str]
) -> None:
    manager.on_error = "zero"
    out = score(manager, KINDS)
    assert out.scores.tolist() == [0.5, 3.0, 1.0, 2.0] + [0.0] * 11
    assert out.extra["acc"][:4] == [None, None, None, True]
    assert out.metrics["reward/errors"] == 11 and out.metrics["reward/timeouts"] == 0
    assert {k: v for k, v in out.metrics.items() if k.startswith("reward/errors_")} == {
        "reward/errors_nan": 2.0,  # nan, and NaN under "score"
        "reward/errors_inf": 2.0,
        "reward/errors_string": 2.0,  # "1" is not 1.0
        "reward/errors_not_a_number": 2.0,  # None, a list
        "reward/errors_no_score": 1.0,
        "reward/errors_not_plain": 1.0,  # an object of a class from the reward file: no crash
        "reward/errors_raised": 1.0,
    }
    line = capfd.readouterr().err.strip()
    assert line.startswith(
        "reward: 11 of 15 samples failed (2 returned NaN, 2 returned inf, 2 returned a string"
    )
    assert "1 raised an exception" in line and line.endswith(
        "first: sample 4 (data_source 'nan') returned NaN"
    )
    assert "\n" not in line


def test_no_line_when_nothing_failed(manager: NaiveRewardManager, capfd: pytest.CaptureFixture[str]) -> None:
    manager.on_error = "zero"
    out = score(manager, ["float", "bool"])
    assert out.metrics["reward/errors"] == 0 and not any(k.startswith("reward/errors_") for k in out.metrics)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("string", r"sample 1 \(data_source 'string'\) returned '1'"),
        ("inf", r"sample 1 \(data_source 'inf'\) returned inf"),
        ("own_class", r"sample 1 \(data_source 'own_class'\) returned an object of type Answer"),
        ("raise", r"sample 1 \(data_source 'raise'\) raised KeyError: 'no answer found' \(returns.py:\d+\)"),
    ],
)
def test_on_error_raise_names_source_index_and_value(
    manager: NaiveRewardManager, source: str, match: str
) -> None:
    manager.on_error = "raise"
    try:
        with pytest.raises(UserError, match=match) as info:
            score(manager, ["float", source, source])
    finally:
        manager.on_error = "zero"
    assert "reward.on_error" in str(info.value) and "(1 more samples failed)" in str(info.value)
    assert score(manager, ["float"]).scores.tolist() == [0.5]  # the pool is intact


def test_on_error_must_be_known() -> None:
    with pytest.raises(UserError, match="reward.on_error: unknown value 'ignore'"):
        build_reward_manager(on_error="ignore")


def test_builtin_scorers_in_process_keep_the_contract() -> None:
    with NaiveRewardManager(on_error="zero") as manager:
        out = manager(["4", "x"], ["4", "four"], ["arith", "arith"], [None, None], [1, 1], 8)
    assert out.scores.tolist() == [1.0, 0.0] and out.metrics["reward/errors_raised"] == 1.0


def test_classify_by_hand() -> None:
    assert outcomes.classify(False) == (0.0, {})
    assert outcomes.classify({"score": True, "pred": "4"}) == (1.0, {"pred": "4"})
    assert outcomes.classify({"score": None})[0] == "not_a_number"
    assert outcomes.classify(float("-inf")) == ("inf", "-inf")
