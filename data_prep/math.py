"""MATH (``DigitalLearningGmbH/MATH-lighteval``): competition problems, answer in ``\\boxed{}``.

Row mapping follows verl's ``examples/data_preprocess/math_dataset.py``: the problem plus an
instruction suffix as the user message and the content of the solution's last ``\\boxed{...}`` as
ground truth. The dataset's ``level`` and ``type`` columns, when present, go into ``extra_info``.
"""

from __future__ import annotations

from typing import Any

from rlkit.data_prep._common import schema_row, user_prompt
from rlkit.errors import UserError

DATA_SOURCE = "DigitalLearningGmbH/MATH-lighteval"
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
REQUIRED_COLUMNS = ("problem", "solution")


def last_boxed(solution: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` (or ``\fbox{...}``, or ``\boxed x``) of a solution.

    Braces are matched, so nested groups such as ``\boxed{\frac{1}{2}}`` come back whole.

    Example:
        >>> last_boxed("so $x = \\boxed{\\frac{1}{2}}$ and not \\boxed{3")
        '\\frac{1}{2}'
        >>> last_boxed("The answer is $\\boxed 5$.")
        '5'
        >>> last_boxed("no box") is None
        True
    """
    start = max(solution.rfind("\\boxed"), solution.rfind("\\fbox"))
    while start >= 0:
        found = _boxed_at(solution, start)
        if found is not None:
            return found
        # an unclosed box (e.g. a stray "\boxed{" in prose) does not hide an earlier, closed one
        start = max(solution.rfind("\\boxed", 0, start), solution.rfind("\\fbox", 0, start))
    return None


def _boxed_at(text: str, start: int) -> str | None:
    head = "\\boxed" if text.startswith("\\boxed", start) else "\\fbox"
    rest = start + len(head)
    if text.startswith(" ", rest):  # "\boxed 5$": the answer runs to the closing "$"
        return text[rest + 1 :].split("$")[0].strip() or None
    if not text.startswith("{", rest):
        return None
    depth = 0
    for pos in range(rest, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[rest + 1 : pos]
    return None


def map_row(row: dict[str, Any], index: int, split: str) -> dict[str, Any]:
    """A raw MATH row (``problem``, ``solution``) as a schema row."""
    problem, solution = row["problem"], row["solution"]
    answer = last_boxed(solution)
    if answer is None:
        raise UserError(f"solution has no \\boxed{{...}} answer: {solution[-80:]!r}")
    extra = {key: row[key] for key in ("level", "type") if key in row}
    return schema_row(
        data_source=DATA_SOURCE,
        prompt=user_prompt(f"{problem} {INSTRUCTION}"),
        ability="math",
        ground_truth=answer,
        split=split,
        index=index,
        **extra,
    )
