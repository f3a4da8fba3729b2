"""Countdown (generated offline, TinyZero style): reach a target with each given number once.

The user message asks for an equation over ``numbers`` (each used exactly once, ``+ - * /``) that
equals ``target``, with the reasoning in ``<think>`` tags and the equation in ``<answer>`` tags, as
TinyZero's prompt does. The ground truth is ``{"target": int, "numbers": [int, ...]}`` and
``data_source`` is ``countdown``, so TinyZero / verl countdown scorers read the rows unchanged.

Every instance is solvable by construction: the target is the value of a random expression tree
over the numbers whose intermediate results are all positive integers (subtraction only of a
smaller value, division only when exact). That expression is kept in ``extra_info.solution``.
Instances are distinct (as a multiset of numbers plus target) and deterministic in the seed.
"""

from __future__ import annotations

import random
from typing import Any

from rlkit.data_prep._common import schema_row, user_prompt
from rlkit.errors import UserError

DATA_SOURCE = "countdown"
PROMPT = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
    "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in "
    "<think> </think> tags. And return the final answer in <answer> </answer> tags, for example "
    "<answer> (1 + 2) / 3 </answer>."
)
_MAX_ATTEMPTS_PER_ROW = 2000


def _combine(rng: random.Random, a: tuple[int, str], b: tuple[int, str]) -> tuple[int, str]:
    (x, ex), (y, ey) = (a, b) if a[0] >= b[0] else (b, a)
    options = [("+", x + y), ("*", x * y)]
    if x > y:
        options.append(("-", x - y))
    if x % y == 0:
        options.append(("/", x // y))
    op, value = rng.choice(options)
    return value, f"({ex} {op} {ey})"


def _instance(
    rng: random.Random, count: int, max_number: int, max_target: int
) -> tuple[list[int], int, str] | None:
    numbers = [rng.randint(1, max_number) for _ in range(count)]
    items = [(n, str(n)) for n in numbers]
    while len(items) > 1:
        i, j = sorted(rng.sample(range(len(items)), 2))
        second, first = items.pop(j), items.pop(i)
        items.append(_combine(rng, first, second))
    target, expr = items[0]
    if not 1 <= target <= max_target:
        return None
    return numbers, target, expr[1:-1] if count > 1 else expr


def instances(
    n: int,
    seed: int,
    *,
    min_numbers: int = 3,
    max_numbers: int = 4,
    max_number: int = 99,
    max_target: int = 100,
) -> list[tuple[list[int], int, str]]:
    """``n`` distinct ``(numbers, target, solution_expression)`` triples, deterministic in ``seed``.

    Raises:
        UserError: Bad options, or fewer than ``n`` distinct instances could be found.

    Example:
        >>> instances(1, seed=0)
        [([61, 72, 13, 46], 22, '(61 - (72 - 46)) - 13')]
    """
    if not 2 <= min_numbers <= max_numbers <= 8:
        raise UserError(
            f"countdown: need 2 <= min_numbers <= max_numbers <= 8, got {min_numbers}-{max_numbers}"
        )
    if max_number < 1 or max_target < 1:
        raise UserError("countdown: max_number and max_target must be at least 1")
    rng = random.Random(seed)
    seen: set[tuple[tuple[int, ...], int]] = set()
    out: list[tuple[list[int], int, str]] = []
    for _ in range(_MAX_ATTEMPTS_PER_ROW * n + 10_000):
        if len(out) == n:
            return out
        found = _instance(rng, rng.randint(min_numbers, max_numbers), max_number, max_target)
        if found is not None and (key := (tuple(sorted(found[0])), found[1])) not in seen:
            seen.add(key)
            out.append(found)
    if len(out) == n:
        return out
    raise UserError(
        f"countdown: found only {len(out)} distinct instances, asked for {n}",
        hint="raise max_number / max_target or ask for fewer (--size)",
    )


def _rows(found: list[tuple[list[int], int, str]], split: str) -> list[dict[str, Any]]:
    return [
        schema_row(
            data_source=DATA_SOURCE,
            prompt=user_prompt(PROMPT.format(numbers=numbers, target=target)),
            ability="math",
            ground_truth={"target": target, "numbers": numbers},
            split=split,
            index=index,
            solution=expr,
        )
        for index, (numbers, target, expr) in enumerate(found)
    ]


def generate(
    n: int,
    seed: int,
    min_numbers: int = 3,
    max_numbers: int = 4,
    max_number: int = 99,
    max_target: int = 100,
    *,
    split: str = "train",
) -> list[dict[str, Any]]:
    """``n`` schema rows of distinct, solvable countdown instances (what ``rlkit data countdown`` writes).

    Args:
        n: Number of rows.
        seed: Seed of the instance stream; the same seed gives the same rows.
        min_numbers: Fewest numbers per instance.
        max_numbers: Most numbers per instance.
        max_number: Numbers are drawn from 1..max_number.
        max_target: Targets lie in 1..max_target.
        split: Value of ``extra_info.split``.
    """
    found = instances(
        n,
        seed,
        min_numbers=min_numbers,
        max_numbers=max_numbers,
        max_number=max_number,
        max_target=max_target,
    )
    return _rows(found, split)


def generate_splits(
    num_train: int,
    num_test: int,
    seed: int,
    min_numbers: int = 3,
    max_numbers: int = 4,
    max_number: int = 99,
    max_target: int = 100,
) -> dict[str, list[dict[str, Any]]]:
    """Disjoint ``train`` and ``test`` rows drawn from one seeded stream (no instance in both)."""
    found = instances(
        num_train + num_test,
        seed,
        min_numbers=min_numbers,
        max_numbers=max_numbers,
        max_number=max_number,
        max_target=max_target,
    )
    return {"train": _rows(found[:num_train], "train"), "test": _rows(found[num_train:], "test")}
