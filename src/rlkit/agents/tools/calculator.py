"""A safe arithmetic calculator: the expression is parsed and walked over an AST whitelist.

Allowed: integer and float literals, ``+ - * / // % **``, unary ``+ -`` and parentheses. Nothing
is ever passed to ``eval``; names, calls, attributes and every other node are refused. Limits keep a
model from making the trainer compute forever: the expression's length, the size of an exponent
and of any intermediate integer.

>>> evaluate("123 * 45")
5535
>>> evaluate("(1 + 2) / 4")
0.75
>>> evaluate("2 ** 100000")
Traceback (most recent call last):
...
rlkit.agents.tools.calculator.CalculatorError: exponent 100000 is larger than 64
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from rlkit.agents.tools.base import ToolResult
from rlkit.agents.tools.function import StatefulTool

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot compute (the message is shown to the model)."""


def _check_size(value: Any, max_digits: int) -> Any:
    if isinstance(value, int) and value.bit_length() > max_digits * 3.33:
        raise CalculatorError(f"a result has more than {max_digits} digits")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not a finite number")
    return value


def _walk(node: ast.AST, max_exponent: int, max_digits: int) -> Any:
    if isinstance(node, ast.Expression):
        return _walk(node.body, max_exponent, max_digits)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check_size(node.value, max_digits)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand, max_exponent, max_digits))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _walk(node.left, max_exponent, max_digits)
        right = _walk(node.right, max_exponent, max_digits)
        if isinstance(node.op, ast.Pow) and abs(right) > max_exponent:
            raise CalculatorError(f"exponent {right} is larger than {max_exponent}")
        try:
            return _check_size(_BINARY[type(node.op)](left, right), max_digits)
        except ZeroDivisionError as exc:
            raise CalculatorError("division by zero") from exc
        except OverflowError as exc:
            raise CalculatorError("the result is too large") from exc
    what = type(node).__name__
    if isinstance(node, ast.Constant):
        what = f"the literal {node.value!r}"
    raise CalculatorError(f"{what} is not allowed (numbers, + - * / // % ** and parentheses only)")


def evaluate(
    expression: str, *, max_length: int = 200, max_exponent: int = 64, max_digits: int = 100
) -> int | float:
    """The value of an arithmetic ``expression``.

    Args:
        expression: Numbers, ``+ - * / // % **`` and parentheses (``x`` and ``^`` are read as
            ``*`` and ``**``, as models often write them).
        max_length: Longest accepted expression, in characters.
        max_exponent: Largest absolute exponent of ``**``.
        max_digits: Most decimal digits of any integer along the way.

    Raises:
        CalculatorError: the expression is too long, malformed, not allowed, or its value is
            infinite, too large or a division by zero.
    """
    text = expression.strip().replace("^", "**").replace("×", "*").replace("x", "*")
    if len(text) > max_length:
        raise CalculatorError(f"the expression is longer than {max_length} characters")
    if not text:
        raise CalculatorError("the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"cannot parse {expression!r}") from exc
    return _walk(tree, max_exponent, max_digits)


def format_number(value: int | float) -> str:
    """``5535`` / ``0.75`` / ``0.3333333333`` (floats to 10 significant digits, no trailing zeros)."""
    if isinstance(value, int):
        return str(value)
    return f"{value:.10g}"


class CalculatorTool(StatefulTool):
    """The ``calculator`` tool: ``calculator(expression)`` -> the value, or an error for the model.

    Args:
        max_length: Longest accepted expression, in characters.
        max_exponent: Largest absolute exponent of ``**``.
        max_digits: Most decimal digits of any integer along the way.
        schema: Overrides the default schema (a tools YAML's ``tool_schema``); its one
            string parameter is taken as the expression.
    """

    name = "calculator"

    def __init__(
        self,
        max_length: int = 200,
        max_exponent: int = 64,
        max_digits: int = 100,
        schema: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            schema=schema
            or {
                "type": "function",
                "function": {
                    "name": "calculator",
                    "description": "evaluate arithmetic",
                    "parameters": {
                        "type": "object",
                        "properties": {"expression": {"type": "string", "description": "e.g. 123*45"}},
                        "required": ["expression"],
                    },
                },
            }
        )
        self.limits = {"max_length": max_length, "max_exponent": max_exponent, "max_digits": max_digits}
        self._argument = next(iter(self.schema["function"]["parameters"]["properties"]), "expression")

    async def call(self, state: Any, arguments: dict[str, Any]) -> ToolResult:
        """Evaluate the expression argument."""
        expression = arguments.get(self._argument)
        if not isinstance(expression, str):
            expression = str(expression)
        try:
            return ToolResult(text=format_number(evaluate(expression, **self.limits)))
        except CalculatorError as exc:
            return ToolResult(text="", error=f"calculator: {exc}")
