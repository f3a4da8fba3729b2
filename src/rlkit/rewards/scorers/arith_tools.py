"""Scorer of the tool-use arithmetic task: 1 when the final answer is the right integer.

The final answer is the text of the trajectory's last assistant turn: what follows the last tool
response (``</tool_response>``) and its turn markers. A trajectory whose last turn is a tool call
(it ran out of turns or length) has no final answer and scores 0. Whether the model called the
calculator does not change the score; it is reported (``tool_called``) for the metrics.
"""

from __future__ import annotations

import re
from typing import Any

from rlkit.rewards.scorers import arith

_TURN_MARKERS = re.compile(r"<\|im_(?:start|end)\|>")
_ROLE_LINES = re.compile(r"(?m)^\s*(?:user|assistant)\s*$")


def final_answer(solution_str: str) -> str | None:
    """The last assistant turn's text of a decoded trajectory (None when it ends in a tool call).

    Example:
        >>> final_answer('<tool_call>{"name": "calculator"}</tool_call><|im_end|>\\n<|im_start|>user\\n'
        ...              '<tool_response>5535</tool_response><|im_end|>\\n<|im_start|>assistant\\n5535<|im_end|>')
        '5535'
        >>> final_answer("5535") is None
        False
        >>> final_answer('<tool_call>{"name": "calculator"}</tool_call>') is None
        True
    """
    tail = solution_str.rsplit("</tool_response>", 1)[-1]
    if "<tool_call>" in tail:
        return None
    return _ROLE_LINES.sub("", _TURN_MARKERS.sub("\n", tail)).strip()


def compute_score(solution_str: str, ground_truth: str | int) -> dict[str, Any]:
    """Score one trajectory: 1.0 if the last integer of its final answer equals ``ground_truth``.

    Args:
        solution_str: The decoded response (all turns after the prompt; special tokens kept or
            skipped).
        ground_truth: The expected integer, as a string (an int is accepted too).

    Returns:
        ``{"score", "acc", "pred", "tool_called"}``: ``pred`` is the integer read from the final
        answer (None if there is none), ``tool_called`` whether the response holds a tool call.

    Example:
        >>> compute_score("5535", "5535")["score"]
        1.0
        >>> compute_score('<tool_call>{"name": "calculator"}</tool_call>', "5535")["score"]
        0.0
    """
    answer = final_answer(solution_str)
    called = "<tool_call>" in solution_str
    if answer is None:
        arith.compute_score("", ground_truth)  # still rejects a non-integer ground truth
        return {"score": 0.0, "acc": False, "pred": None, "tool_called": called}
    return {**arith.compute_score(answer, ground_truth), "tool_called": called}
