"""GSM8K (``openai/gsm8k``, config ``main``): grade-school word problems, answer after ``####``.

Row mapping follows verl's ``examples/data_preprocess/gsm8k.py`` exactly: the question plus an
instruction suffix as the user message, the number after ``####`` (commas removed) as ground truth,
and the raw question and answer kept in ``extra_info``.
"""

from __future__ import annotations

import re
from typing import Any

from rlkit.data_prep._common import schema_row, user_prompt
from rlkit.errors import UserError

DATA_SOURCE = "openai/gsm8k"
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
REQUIRED_COLUMNS = ("question", "answer")
_FINAL = re.compile(r"#### (\-?[0-9\.\,]+)")


def extract_answer(answer: str) -> str:
    """The final answer of a GSM8K solution: the first ``#### N``, commas removed.

    Raises:
        UserError: The solution has no ``#### N`` line.

    Example:
        >>> extract_answer("48/2 = 24 clips in May.\\n#### 1,072")
        '1072'
    """
    match = _FINAL.search(answer)
    if match is None:
        raise UserError(f"answer has no '#### N' final answer: {answer[-80:]!r}")
    return match.group(1).replace(",", "")


def map_row(row: dict[str, Any], index: int, split: str) -> dict[str, Any]:
    """A raw GSM8K row (``question``, ``answer``) as a schema row."""
    question, answer = row["question"], row["answer"]
    return schema_row(
        data_source=DATA_SOURCE,
        prompt=user_prompt(f"{question} {INSTRUCTION}"),
        ability="math",
        ground_truth=extract_answer(answer),
        split=split,
        index=index,
        answer=answer,
        question=question,
    )
