"""Arithmetic (generated offline): ``23+45=`` -> ``68``, the embedded default's synthetic task.

The prompt is deliberately short (the embedded default trains a tiny byte-level model on it): the
user message is just the expression and ``=``, the ground truth the exact integer result as a
string. Operands have exactly ``digits`` digits (0-9 for one digit). Operations are any of
``+ - * /``; division problems are built as ``(b*q)/b=`` so the answer is always an integer.

Problems are drawn without repetition from a ``random.Random(seed)`` stream, so the same seed
gives the same rows (and byte-identical parquet files), and a train/test split made from one
stream never shares a problem between its two halves.
"""

from __future__ import annotations

import random
from typing import Any

from rlkit.data_prep._common import schema_row, user_prompt
from rlkit.errors import UserError

DATA_SOURCE = "arith"
OPERATIONS = "+-*/"


def _check(n: int, digits: int, ops: str) -> tuple[int, int]:
    if digits < 1 or digits > 18:
        raise UserError(f"arith: digits must be between 1 and 18, got {digits}")
    if not ops or any(op not in OPERATIONS for op in ops) or len(set(ops)) != len(ops):
        raise UserError(f"arith: ops must be distinct characters of {OPERATIONS!r}, got {ops!r}")
    low, high = (0, 9) if digits == 1 else (10 ** (digits - 1), 10**digits - 1)
    count = high - low + 1
    distinct = sum(count * (count - (low == 0 and op == "/")) for op in ops)
    if n > distinct:
        raise UserError(
            f"arith: only {distinct} distinct problems have {digits}-digit operands and ops {ops!r}, "
            f"asked for {n}",
            hint="ask for fewer (--size), or use more digits or operations",
        )
    return low, high


def _draw(rng: random.Random, low: int, high: int, ops: str) -> tuple[str, int]:
    op = rng.choice(ops)
    a, b = rng.randint(low, high), rng.randint(max(low, 1) if op == "/" else low, high)
    if op == "+":
        return f"{a}+{b}=", a + b
    if op == "-":
        return f"{a}-{b}=", a - b
    if op == "*":
        return f"{a}*{b}=", a * b
    return f"{a * b}/{b}=", a


def problems(n: int, seed: int, *, digits: int = 2, ops: str = "+-") -> list[tuple[str, int]]:
    """``n`` distinct ``(expression, answer)`` pairs, deterministic in ``seed``.

    Example:
        >>> problems(2, seed=0)
        [('63-15=', 48), ('75-72=', 3)]
    """
    low, high = _check(n, digits, ops)
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[str, int]] = []
    while len(out) < n:
        text, answer = _draw(rng, low, high, ops)
        if text not in seen:
            seen.add(text)
            out.append((text, answer))
    return out


def _rows(pairs: list[tuple[str, int]], split: str) -> list[dict[str, Any]]:
    return [
        schema_row(
            data_source=DATA_SOURCE,
            prompt=user_prompt(text),
            ability="arith",
            ground_truth=str(answer),
            split=split,
            index=index,
        )
        for index, (text, answer) in enumerate(pairs)
    ]


def generate(
    n: int, seed: int, digits: int = 2, ops: str = "+-", *, split: str = "train"
) -> list[dict[str, Any]]:
    """``n`` schema rows of distinct arithmetic problems (what ``rlkit data arith`` writes).

    Args:
        n: Number of rows.
        seed: Seed of the problem stream; the same seed gives the same rows.
        digits: Digits of each operand.
        ops: Operations to draw from, a string of characters of ``+-*/``.
        split: Value of ``extra_info.split``.

    Raises:
        UserError: A bad option, or more rows than there are distinct problems.
    """
    return _rows(problems(n, seed, digits=digits, ops=ops), split)


def generate_splits(
    num_train: int, num_test: int, seed: int, digits: int = 2, ops: str = "+-"
) -> dict[str, list[dict[str, Any]]]:
    """Disjoint ``train`` and ``test`` rows drawn from one seeded stream (no problem in both)."""
    pairs = problems(num_train + num_test, seed, digits=digits, ops=ops)
    return {"train": _rows(pairs[:num_train], "train"), "test": _rows(pairs[num_train:], "test")}
