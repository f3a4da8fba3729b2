"""Built-in scorers on worked examples, the data_source routing and the docstring examples."""

from __future__ import annotations

import doctest
import json

import pytest

from rlkit.errors import UserError
from rlkit.rewards import scorers
from rlkit.rewards.scorers import arith, countdown, default_compute_score, gsm8k
from rlkit.rewards.scorers import math as math_scorer

LONG = "lorem ipsum " * 100_000  # 1.2 MB of filler


@pytest.mark.parametrize("module", [gsm8k, math_scorer, countdown, arith, scorers])
def test_docstring_examples(module: object) -> None:
    failed, attempted = doctest.testmod(module, raise_on_error=False)  # type: ignore[arg-type]
    assert attempted > 0 and failed == 0


# ----------------------------------------------------------------------------- gsm8k


@pytest.mark.parametrize(
    ("response", "truth", "expected"),
    [
        ("48 / 2 = 24 clips. 48 + 24 = 72\n#### 72", "72", 1.0),
        ("#### 1,200", "1200", 1.0),
        ("#### $1200", "1200", 0.0),  # verl's regex needs the digits right after "#### "
        ("#### -3", "-3", 1.0),
        ("#### 5\n#### 6", "6", 1.0),  # the last marker wins
        ("#### 5\n#### 6", "5", 0.0),
        ("the answer is 72", "72", 0.0),  # strict needs the marker
        ("", "72", 0.0),
        ("#### 72 ✓ — ünïcödé", "72", 1.0),
        ("#### 72" + LONG, "72", 0.0),  # only the last 300 characters are read
        (LONG + "#### 72", "72", 1.0),
    ],
)
def test_gsm8k_strict(response: str, truth: str, expected: float) -> None:
    assert gsm8k.compute_score(response, truth) == expected


def test_gsm8k_flexible_and_scores() -> None:
    assert gsm8k.compute_score("so it is 18.", "18", method="flexible") == 1.0
    assert gsm8k.compute_score("1,234 apples", "1234", method="flexible") == 1.0
    assert gsm8k.compute_score("nothing", "1", method="flexible") == 0.0
    assert gsm8k.compute_score("#### 3", "4", format_score=0.1) == 0.1
    assert gsm8k.compute_score("#### 4", "4", score=2.0) == 2.0
    with pytest.raises(ValueError, match="method"):
        gsm8k.compute_score("#### 4", "4", method="fuzzy")


# ----------------------------------------------------------------------------- MATH


@pytest.mark.parametrize(
    "form",
    [r"\frac{1}{2}", "0.5", r"\dfrac12", "1/2", r"\tfrac{1}{2}", ".5", r"\frac{2}{4}", "0.50", r"\frac1{2}"],
)
def test_math_forms_of_one_half(form: str) -> None:
    assert math_scorer.compute_score(f"so the answer is $\\boxed{{{form}}}$", r"\frac{1}{2}") == 1.0


@pytest.mark.parametrize(
    ("answer", "truth"),
    [
        ("1,000", "1000"),
        ("1{,}000", "1000"),
        (r"10\text{ cm}", "10"),
        (r"5 \text{ m}^2", "5"),
        (r"\text{(B)}", "(B)"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        ("45°", "45"),
        (r"50\%", "50"),
        (r"\$18", "18"),
        ("x = 3", "3"),
        (r"\left( 3, 4 \right)", "(3,4)"),
        (r"\sqrt2", r"\sqrt{2}"),
        (r"\frac{\sqrt{3}}{2}", r"\dfrac{\sqrt3}{2}"),
        ("-.25", r"-\frac{1}{4}"),
        (r"\boxed{7}", "7"),  # a ground truth that kept its box
    ],
)
def test_math_equivalences(answer: str, truth: str) -> None:
    assert math_scorer.compute_score(rf"\boxed{{{answer}}}", truth) == 1.0


@pytest.mark.parametrize(
    ("response", "truth"),
    [
        (r"\boxed{3}", "4"),
        (r"\boxed{1/3}", "0.33"),
        (r"\boxed{1,2}", "12"),  # a pair is not a thousands separator
        ("the answer is 4", "4"),  # no box
        (r"\boxed{4", "4"),  # unbalanced
        ("", "4"),
        (r"\boxed{}", "4"),
    ],
)
def test_math_wrong_or_malformed(response: str, truth: str) -> None:
    assert math_scorer.compute_score(response, truth) == 0.0


def test_math_box_variants_and_last_wins() -> None:
    assert math_scorer.compute_score(r"first \boxed{3} then \boxed{4}", "4") == 1.0
    assert math_scorer.compute_score(r"first \boxed{4} then \boxed{3}", "4") == 0.0
    assert math_scorer.compute_score(r"so $\boxed 4$.", "4") == 1.0
    assert math_scorer.compute_score(r"\fbox{4}", "4") == 1.0
    assert math_scorer.compute_score(r"\boxed{\{1, 2\}}", r"\{1,2\}") == 1.0
    assert math_scorer.compute_score(r"ünï \boxed{π}", "π") == 1.0


def test_math_long_and_hostile_inputs() -> None:
    assert math_scorer.compute_score(LONG + r"\boxed{42}", "42") == 1.0
    assert math_scorer.compute_score(r"\boxed{" + "9" * 50_000 + "}", "9" * 50_000) == 1.0
    assert math_scorer.compute_score(r"\boxed{" + "{" * 10_000 + "}" * 10_000 + "}", "1") == 0.0
    assert math_scorer.compute_score(r"\boxed{1/0}", "1") == 0.0
    assert math_scorer.compute_score(r"\boxed{x}", None) == 0.0  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- countdown

TRUTH = {"target": 24, "numbers": [3, 4, 2, 1]}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<answer>(3 + 4 + 1) * 2 + 1 - 1</answer>", 0.1),  # 1 used twice
        ("<answer>(3 * 4) * (2 * 1)</answer>", 1.0),
        ("<answer> 3*4*2*1 </answer>", 1.0),
        ("<think>try</think><answer>3 * 4 * 2 / 1</answer>", 1.0),
        ("<answer>3 * 4 * 2</answer>", 0.1),  # misses a number
        ("<answer>3 + 4 + 2 + 1</answer>", 0.1),  # wrong value
        ("<answer>3 * 4 * 2 * 1 = 24</answer>", 0.0),  # not an expression
        ("<answer>3 * 4 / (2 - 2)</answer>", 0.1),
        ("<answer>(4 - 1) / (2 / 3) * 4 / 1</answer>", 0.1),
        ("<answer>3.0 * 4 * 2 * 1</answer>", 0.0),  # integers only
        ("<answer>3 ** 4</answer>", 0.0),
        ("<answer>__import__('os').system('true')</answer>", 0.0),
        ("<answer>(3 * 4 * 2 * 1</answer>", 0.0),
        ("<answer></answer>", 0.0),
        ("3 * 4 * 2 * 1", 0.0),  # no tag
        ("", 0.0),
        ("<answer>3*4*2*1</answer> no wait <answer>3+4</answer>", 0.1),  # the last tag wins
        ("<answer>３*4*2*1</answer>", 0.0),  # full-width digit is not an ASCII integer literal
    ],
)
def test_countdown(response: str, expected: float) -> None:
    assert countdown.compute_score(response, TRUTH) == expected


def test_countdown_exact_division_and_json_truth() -> None:
    truth = json.dumps({"target": 6, "numbers": [8, 3, 4]})
    assert (
        countdown.compute_score("<answer>8 / (4 / 3)</answer>", truth) == 1.0
    )  # float eval would be fine too
    assert (
        countdown.compute_score("<answer>-(3 - 8) + 4 / 4</answer>", {"target": 6, "numbers": [3, 8, 4, 4]})
        == 1.0
    )


def test_countdown_guards() -> None:
    assert countdown.compute_score("<answer>" + "1+" * 5000 + "1</answer>", TRUTH) == 0.0
    assert countdown.compute_score("<answer>" + "(" * 300 + "1" + ")" * 300 + "</answer>", TRUTH) == 0.0
    assert countdown.compute_score("<answer>" + "9" * 40 + "</answer>", TRUTH) == 0.0
    assert countdown.compute_score(LONG + "<answer>3*4*2*1</answer>", TRUTH) == 1.0
    assert countdown.evaluate_expression("2 ** 10 ** 10") is None
    with pytest.raises(ValueError):
        countdown.compute_score("<answer>1</answer>", ["not", "a", "dict"])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- arith


@pytest.mark.parametrize(
    ("response", "truth", "score", "pred"),
    [
        ("17 + 25 = 42", "42", 1.0, "42"),
        ("it is -7", "-7", 1.0, "-7"),
        ("it is 7", "-7", 0.0, "7"),
        ("0042", "42", 1.0, "0042"),
        ("-0", "0", 1.0, "-0"),
        ("first 42 then 41", "42", 0.0, "41"),
        ("", "1", 0.0, None),
        ("ünïcödé ٣ 5", "5", 1.0, "5"),
        (LONG + "9" * 10_000, "9" * 10_000, 1.0, "9" * 10_000),
    ],
)
def test_arith(response: str, truth: str, score: float, pred: str | None) -> None:
    result = arith.compute_score(response, truth)
    assert result == {"score": score, "acc": score == 1.0, "pred": pred}


def test_arith_int_ground_truth_and_bad_truth() -> None:
    assert arith.compute_score("12", 12)["score"] == 1.0
    with pytest.raises(ValueError, match="integer"):
        arith.compute_score("12", "twelve")


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("source", "response", "truth", "expected"),
    [
        ("openai/gsm8k", "#### 5", "5", 1.0),
        ("lighteval/MATH", r"\boxed{5}", "5", 1.0),
        ("DigitalLearningGmbH/MATH-lighteval", r"\boxed{5}", "5", 1.0),
        ("HuggingFaceH4/MATH-500", r"\boxed{5}", "5", 1.0),
        ("math", r"\boxed{5}", "5", 1.0),
        ("countdown", "<answer>2+3</answer>", {"target": 5, "numbers": [2, 3]}, 1.0),
        ("arith", "5", "5", {"score": 1.0, "acc": True, "pred": "5"}),
    ],
)
def test_routing(source: str, response: str, truth: object, expected: object) -> None:
    assert (
        default_compute_score(source, response, truth, extra_info={"split": "test"}, unused_kwarg=1)
        == expected
    )


def test_unknown_data_source_names_it_and_the_way_out() -> None:
    with pytest.raises(UserError) as info:
        default_compute_score("my/dataset", "x", "y")
    message = str(info.value)
    assert "'my/dataset'" in message and "openai/gsm8k" in message and "reward.custom.path" in message
