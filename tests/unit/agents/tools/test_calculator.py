"""The calculator: exact arithmetic over an AST whitelist, with limits; never eval."""

from __future__ import annotations

import asyncio
import doctest

import pytest

from rlkit.agents.tools import calculator
from rlkit.agents.tools.calculator import CalculatorError, CalculatorTool, evaluate


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("123*45", 5535),
        ("(1+2)*3", 9),
        ("7//2", 3),
        ("7%3", 1),
        ("2**10", 1024),
        ("-3+ +4", 1),
        ("1/4", 0.25),
        ("2^3", 8),
        ("12 x 3", 36),
        ("1.5*2", 3.0),
        ("10**-2", 0.01),
    ],
)
def test_values(expression: str, value: float) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('true')", "not allowed"),
        ("abs(-1)", "not allowed"),
        ("a+1", "not allowed"),
        ("'a'*3", "the literal 'a' is not allowed"),
        ("[1]*3", "not allowed"),
        ("1 if 1 else 2", "not allowed"),
        ("2**65", "exponent 65 is larger than 64"),
        ("(10**60)*(10**60)", "more than 100 digits"),
        ("9**64**64", "more than 100 digits"),
        ("(2**64)**64", "more than 100 digits"),
        ("1/0", "division by zero"),
        ("1e308*10", "not a finite number"),
        ("1+" * 150 + "1", "longer than 200 characters"),
        ("", "empty"),
        ("1+", "cannot parse"),
    ],
)
def test_refusals(expression: str, message: str) -> None:
    with pytest.raises(CalculatorError, match=message):
        evaluate(expression)


def test_tool_returns_text_or_one_line_error() -> None:
    tool = CalculatorTool()
    assert asyncio.run(tool.execute("t", {"expression": "123*45"})).text == "5535"
    assert asyncio.run(tool.execute("t", {"expression": "1/3"})).text == "0.3333333333"
    bad = asyncio.run(tool.execute("t", {"expression": "open('x')"}))
    assert (
        bad.error is not None
        and bad.error.startswith("calculator: Call is not allowed")
        and "\n" not in bad.error
    )
    assert asyncio.run(tool.execute("t", {"expr": "1"})).error.startswith(
        "calculator: missing argument(s): expression"
    )


def test_module_doctest() -> None:
    assert doctest.testmod(calculator).failed == 0
