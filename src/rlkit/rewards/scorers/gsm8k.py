"""GSM8K scorer: the number after ``####`` (verl's ``gsm8k.compute_score``).

Only the last 300 characters of a response are read, as in verl, so a long chain of thought
cannot smuggle in an earlier ``#### N``; the last match wins.
"""

from __future__ import annotations

import re

_CLIP_CHARS = 300
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_NUMBER = re.compile(r"(\-?[0-9\.\,]+)")


def extract_solution(solution_str: str, method: str = "strict") -> str | None:
    """The final answer of a response, or None when there is none.

    Args:
        solution_str: The decoded response.
        method: ``strict`` (the last ``#### N``, commas and ``$`` removed, exactly as verl) or
            ``flexible`` (the last number anywhere; commas and a sentence-final period removed).

    Returns:
        The answer as a string, or None.

    Example:
        >>> extract_solution("so 3 + 4 = 7\\n#### 7")
        '7'
        >>> extract_solution("It costs $1,200.", method="flexible")
        '1200'
        >>> extract_solution("no marker 7") is None
        True
    """
    if method not in ("strict", "flexible"):
        raise ValueError(f"gsm8k: method must be 'strict' or 'flexible', got {method!r}")
    tail = solution_str[-_CLIP_CHARS:]
    if method == "strict":
        matches = _STRICT.findall(tail)
        return str(matches[-1]).replace(",", "").replace("$", "") if matches else None
    for candidate in reversed(_NUMBER.findall(tail)):
        # verl keeps a sentence-final period ("is 18.") and then fails the exact match; strip it.
        cleaned = str(candidate).replace(",", "").rstrip(".")
        if cleaned not in ("", "-"):
            return cleaned
    return None


def compute_score(
    solution_str: str,
    ground_truth: str,
    method: str = "strict",
    format_score: float = 0.0,
    score: float = 1.0,
) -> float:
    """Score a GSM8K response against its ground-truth number.

    Args:
        solution_str: The decoded response.
        ground_truth: The number after ``####`` in the dataset's answer (commas removed).
        method: ``strict`` or ``flexible``, see :func:`extract_solution`.
        format_score: Score of an answer that was found but is wrong.
        score: Score of a correct answer.

    Returns:
        ``score`` if the extracted answer equals the ground truth (as strings), ``format_score`` if
        an answer was found but differs, 0.0 if none was found.

    Example:
        >>> compute_score("Natalia sold 48 + 24 = 72 clips.\\n#### 72", "72")
        1.0
        >>> compute_score("#### 71", "72")
        0.0
        >>> compute_score("The answer is 72", "72", method="flexible")
        1.0
    """
    answer = extract_solution(solution_str, method=method)
    if answer is None:
        return 0.0
    return float(score) if answer == str(ground_truth).replace(",", "").strip() else float(format_score)
