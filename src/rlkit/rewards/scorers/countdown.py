"""Countdown scorer (TinyZero convention): combine the given numbers into the target.

The response must hold ``<answer>EXPR</answer>`` (the last one wins). EXPR may use ``+ - * /``,
parentheses and integer literals. It is parsed with :mod:`ast` and evaluated exactly with
:class:`fractions.Fraction` by a small whitelist evaluator: never ``eval``, no names, no calls, no
powers, and bounded input sizes, so a hostile response cannot run code or exhaust memory.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any, cast

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_MAX_EXPR_CHARS = 512
_MAX_LITERAL_DIGITS = 18
_MAX_NODES = 256
_BINARY: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


class _Rejected(Exception):
    """The expression is outside the countdown grammar."""


def _parse(expr: str) -> tuple[ast.expr, list[int]]:
    """Parse and validate ``expr``; returns its tree and the integer literals it uses, in order."""
    if not expr or len(expr) > _MAX_EXPR_CHARS:
        raise _Rejected("empty or too long")
    try:
        tree = ast.parse(expr, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise _Rejected(str(exc)) from exc
    literals: list[int] = []
    nodes = list(ast.walk(tree))
    if len(nodes) > _MAX_NODES:
        raise _Rejected("too many nodes")
    for node in nodes:
        if isinstance(node, ast.Constant):
            value = node.value
            if type(value) is not int or len(str(value)) > _MAX_LITERAL_DIGITS:
                raise _Rejected(f"literal {value!r} is not a small integer")
            literals.append(value)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise _Rejected(f"operator {type(node.op).__name__}")
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise _Rejected(f"operator {type(node.op).__name__}")
        elif not isinstance(node, (ast.operator, ast.unaryop)):
            raise _Rejected(f"{type(node).__name__} is not allowed")
    return tree, literals


def _evaluate(node: ast.expr) -> Fraction:
    """Exact value of a validated tree; raises ZeroDivisionError on a division by zero."""
    if isinstance(node, ast.Constant):
        return Fraction(cast(int, node.value))
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise _Rejected(type(node).__name__)


def evaluate_expression(expr: str) -> Fraction | None:
    """The exact value of a countdown expression, or None if it is not one or divides by zero.

    Example:
        >>> evaluate_expression("(25 - 5) * 3 / 4")
        Fraction(15, 1)
        >>> evaluate_expression("2 ** 1000000") is None
        True
        >>> evaluate_expression("__import__('os')") is None
        True
    """
    try:
        tree, _ = _parse(expr.strip())
        return _evaluate(tree)
    except (_Rejected, ZeroDivisionError, RecursionError):
        return None


def extract_answer(solution_str: str) -> str | None:
    """The content of the last ``<answer>...</answer>``, stripped, or None.

    Example:
        >>> extract_answer("<answer>1+2</answer> then <answer> 3*4 </answer>")
        '3*4'
    """
    matches = _ANSWER.findall(solution_str)
    return matches[-1].strip() if matches else None


def _parse_ground_truth(ground_truth: Mapping[str, Any] | str) -> tuple[int, list[int]]:
    if isinstance(ground_truth, str):
        ground_truth = json.loads(ground_truth)
    if not isinstance(ground_truth, Mapping):
        raise ValueError(
            f"countdown: ground_truth must be a dict or its JSON, got {type(ground_truth).__name__}"
        )
    return int(ground_truth["target"]), [int(n) for n in ground_truth["numbers"]]


def compute_score(
    solution_str: str,
    ground_truth: Mapping[str, Any] | str,
    format_score: float = 0.1,
    score: float = 1.0,
) -> float:
    """Score a countdown response.

    Args:
        solution_str: The decoded response.
        ground_truth: ``{"target": int, "numbers": [int, ...]}`` or its JSON string.
        format_score: Score of a parseable answer that is wrong (uses other numbers, misses the
            target, divides by zero).
        score: Score of a correct answer.

    Returns:
        ``score`` if the last answer uses each given number exactly once and equals the target,
        ``format_score`` if it is a parseable expression but wrong, 0.0 otherwise.

    Example:
        >>> truth = {"target": 24, "numbers": [4, 6, 1]}
        >>> compute_score("<think>...</think><answer>4 * 6 * 1</answer>", truth)
        1.0
        >>> compute_score("<answer>4 * 6</answer>", truth)
        0.1
        >>> compute_score("<answer>twenty four</answer>", '{"target": 24, "numbers": [4, 6, 1]}')
        0.0
    """
    target, numbers = _parse_ground_truth(ground_truth)
    expr = extract_answer(solution_str)
    if expr is None:
        return 0.0
    try:
        tree, literals = _parse(expr)
    except _Rejected:
        return 0.0
    if sorted(literals) != sorted(numbers):
        return float(format_score)
    try:
        value = _evaluate(tree)
    except (ZeroDivisionError, RecursionError):
        return float(format_score)
    return float(score) if value == target else float(format_score)
