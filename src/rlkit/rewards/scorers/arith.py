"""Arithmetic scorer for the embedded synthetic task: the last integer of the response.

Integers are compared as normalised digit strings (sign, leading zeros), never through
``int()``, so a response of a million digits costs one regex pass and cannot hit Python's
integer-parsing limit.
"""

from __future__ import annotations

import re
from typing import Any

_INTEGER = re.compile(r"-?\d+")


def _canonical(integer: str) -> str:
    negative = integer.startswith("-")
    digits = integer.lstrip("-").lstrip("0") or "0"
    return "-" + digits if negative and digits != "0" else digits


def compute_score(solution_str: str, ground_truth: str | int) -> dict[str, Any]:
    """Score an arithmetic response: 1.0 if its last integer equals the ground truth.

    Args:
        solution_str: The decoded response.
        ground_truth: The expected integer, as a string (an int is accepted too).

    Returns:
        ``{"score": 1.0 | 0.0, "acc": bool, "pred": str | None}`` where ``pred`` is the last
        integer found (None if there is none).

    Example:
        >>> compute_score("3 + 4 = 7", "7")
        {'score': 1.0, 'acc': True, 'pred': '7'}
        >>> compute_score("the answer is -12", "12")
        {'score': 0.0, 'acc': False, 'pred': '-12'}
        >>> compute_score("no idea", "5")
        {'score': 0.0, 'acc': False, 'pred': None}
    """
    truth = str(ground_truth).strip()
    if not _INTEGER.fullmatch(truth):
        raise ValueError(f"arith: ground_truth must be an integer, got {truth[:40]!r}")
    matches = _INTEGER.findall(solution_str)
    pred = matches[-1] if matches else None
    acc = pred is not None and _canonical(pred) == _canonical(truth)
    return {"score": 1.0 if acc else 0.0, "acc": acc, "pred": pred}
