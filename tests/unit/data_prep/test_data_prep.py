"""Dataset modules: row mapping of gsm8k / math / hh_rlhf, and the offline generators arith / countdown."""

from __future__ import annotations

import ast
import doctest
import re
from collections import Counter
from fractions import Fraction

import pytest

import rlkit.data_prep as data_prep
from rlkit.data_prep import arith, countdown, gsm8k, hh_rlhf, math
from rlkit.errors import UserError


@pytest.mark.parametrize("module", [gsm8k, math, hh_rlhf, arith, countdown], ids=lambda m: m.__name__)
def test_doctests(module) -> None:
    failures, _ = doctest.testmod(module, verbose=False)
    assert failures == 0


def test_registry_entries_are_consistent() -> None:
    names = data_prep.dataset_names()
    assert len(names) == len(set(names))
    assert {"gsm8k", "math", "countdown", "arith", "hh_rlhf"} <= set(names)
    for entry in data_prep.DATASETS:
        assert (entry.map_fn is None) != (entry.generator is None), entry.name
        assert (entry.hub_id is None) == (entry.generator is not None), entry.name
        if entry.generator is not None:
            assert entry.default_size > 0 and not entry.has_splits
    with pytest.raises(UserError) as err:
        data_prep.get_dataset("gsm8")
    assert "did you mean gsm8k" in (err.value.hint or "")


# ----------------------------------------------------------------------------- gsm8k / math / hh_rlhf


def test_gsm8k_row_is_verls() -> None:
    raw = {"question": "Natalia sold 48 clips. How many?", "answer": "48 + 24 = 72\n#### 1,072"}
    row = gsm8k.map_row(raw, 5, "test")
    assert row == {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": raw["question"] + " " + gsm8k.INSTRUCTION}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "1072"},
        "extra_info": {"split": "test", "index": 5, "answer": raw["answer"], "question": raw["question"]},
    }
    assert gsm8k.extract_answer("#### -3.5") == "-3.5"


def test_gsm8k_without_marker_is_a_user_error() -> None:
    with pytest.raises(UserError, match="####"):
        gsm8k.map_row({"question": "q", "answer": "the answer is 4"}, 0, "train")


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        (r"so $\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
        (r"first \boxed{1}, finally \boxed{2}", "2"),
        (r"nested \boxed{\sqrt{x^{2}}}", r"\sqrt{x^{2}}"),
        (r"\fbox{7} done", "7"),
        (r"$\boxed 5$.", "5"),
        (r"closed \boxed{4} then a stray \boxed{", "4"),
        ("no box at all", None),
    ],
)
def test_math_last_boxed(solution: str, expected: str | None) -> None:
    assert math.last_boxed(solution) == expected


def test_math_row_keeps_level_and_type() -> None:
    raw = {
        "problem": "What is 1/2?",
        "solution": r"It is $\boxed{\frac12}$.",
        "level": "Level 1",
        "type": "Algebra",
    }
    row = math.map_row(raw, 0, "train")
    assert row["data_source"] == "DigitalLearningGmbH/MATH-lighteval"
    assert row["prompt"][0]["content"] == "What is 1/2? " + math.INSTRUCTION
    assert row["reward_model"] == {"style": "rule", "ground_truth": r"\frac12"}
    assert row["extra_info"] == {"split": "train", "index": 0, "level": "Level 1", "type": "Algebra"}
    with pytest.raises(UserError, match="boxed"):
        math.map_row({"problem": "p", "solution": "no answer"}, 0, "train")


def test_hh_rlhf_prompt_is_the_shared_dialogue() -> None:
    shared = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke"
    raw = {
        "chosen": shared + "\n\nAssistant: Why did the chicken...",
        "rejected": shared + "\n\nAssistant: No.",
    }
    row = hh_rlhf.map_row(raw, 3, "train")
    assert row is not None
    assert row["prompt"] == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    assert row["data_source"] == "hh_rlhf" and row["ability"] == "alignment"
    assert row["reward_model"] == {"style": "model", "ground_truth": "Why did the chicken..."}
    assert row["extra_info"]["chosen"] == "Why did the chicken..." and row["extra_info"]["rejected"] == "No."


def test_hh_rlhf_mismatched_pair_is_skipped_and_garbage_rejected() -> None:
    raw = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: other\n\nAssistant: c"}
    assert hh_rlhf.map_row(raw, 0, "train") is None
    with pytest.raises(UserError, match="HH-RLHF"):
        hh_rlhf.map_row({"chosen": "just text", "rejected": "just text"}, 0, "train")
    with pytest.raises(UserError, match="Assistant"):
        hh_rlhf.map_row({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a"}, 0, "train")


# ----------------------------------------------------------------------------- arith

_ARITH = re.compile(r"^(\d+)([-+*/])(\d+)=$")


@pytest.mark.parametrize(("digits", "ops"), [(1, "+-*/"), (2, "+-"), (3, "*/")])
def test_arith_answers_are_correct(digits: int, ops: str) -> None:
    rows = arith.generate(60, seed=7, digits=digits, ops=ops)
    texts = [row["prompt"][0]["content"] for row in rows]
    assert len(set(texts)) == len(texts)
    for row, text in zip(rows, texts, strict=True):
        a, op, b = _ARITH.match(text).groups()  # type: ignore[union-attr]
        assert op in ops
        if op != "/":  # a division's dividend is built as divisor * quotient
            assert len(a) == digits and len(b) == digits
        expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}.get(op)
        if op == "/":
            assert int(a) % int(b) == 0
            expected = int(a) // int(b)
        assert row["reward_model"] == {"style": "rule", "ground_truth": str(expected)}
        assert row["data_source"] == "arith" and len(row["prompt"]) == 1


def test_arith_is_deterministic_and_splits_are_disjoint() -> None:
    assert arith.generate(50, seed=3) == arith.generate(50, seed=3)
    assert arith.generate(50, seed=3) != arith.generate(50, seed=4)
    splits = arith.generate_splits(40, 10, seed=3)
    train = {r["prompt"][0]["content"] for r in splits["train"]}
    test = {r["prompt"][0]["content"] for r in splits["test"]}
    assert len(train) == 40 and len(test) == 10 and not train & test
    assert [r["extra_info"] for r in splits["test"][:2]] == [
        {"split": "test", "index": 0},
        {"split": "test", "index": 1},
    ]
    # the in-process generator and the split generator draw the same stream
    assert [r["prompt"] for r in arith.generate(40, seed=3)] == [r["prompt"] for r in splits["train"]]


def test_arith_bad_options() -> None:
    with pytest.raises(UserError, match="distinct problems"):
        arith.generate(201, seed=0, digits=1, ops="+-")
    assert len(arith.generate(200, seed=0, digits=1, ops="+-")) == 200  # the whole space
    with pytest.raises(UserError, match="ops"):
        arith.generate(5, seed=0, ops="+%")
    with pytest.raises(UserError, match="digits"):
        arith.generate(5, seed=0, digits=0)


# ----------------------------------------------------------------------------- countdown


def _evaluate(expr: str) -> tuple[Fraction, list[int]]:
    """Exact value of an arithmetic expression and the integer literals it uses (no eval())."""
    literals: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            literals.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            ops = {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}
            if isinstance(node.op, ast.Div):
                return left / right
            return ops[type(node.op)]
        raise AssertionError(f"unexpected node {ast.dump(node)}")

    return walk(ast.parse(expr, mode="eval")), literals


def test_countdown_instances_are_solvable_and_well_formed() -> None:
    rows = countdown.generate(80, seed=11, min_numbers=3, max_numbers=4, max_number=50, max_target=60)
    keys = set()
    for row in rows:
        truth = row["reward_model"]["ground_truth"]
        numbers, target = truth["numbers"], truth["target"]
        assert 3 <= len(numbers) <= 4 and all(1 <= n <= 50 for n in numbers) and 1 <= target <= 60
        value, used = _evaluate(row["extra_info"]["solution"])
        assert value == target and Counter(used) == Counter(numbers)
        content = row["prompt"][0]["content"]
        assert f"Using the numbers {numbers}, create an equation that equals {target}." in content
        assert "<answer>" in content and row["data_source"] == "countdown"
        keys.add((tuple(sorted(numbers)), target))
    assert len(keys) == len(rows)


def test_countdown_is_deterministic_and_splits_are_disjoint() -> None:
    assert countdown.generate(30, seed=2) == countdown.generate(30, seed=2)
    assert countdown.generate(30, seed=2) != countdown.generate(30, seed=3)
    splits = countdown.generate_splits(20, 5, seed=2)

    def key(row: dict) -> tuple[tuple[int, ...], int]:
        truth = row["reward_model"]["ground_truth"]
        return tuple(sorted(truth["numbers"])), truth["target"]

    assert not {key(r) for r in splits["train"]} & {key(r) for r in splits["test"]}
    with pytest.raises(UserError, match="numbers"):
        countdown.generate(5, seed=0, min_numbers=5, max_numbers=4)
    with pytest.raises(UserError, match="distinct"):
        countdown.generate(50, seed=0, min_numbers=2, max_numbers=2, max_number=2, max_target=4)
