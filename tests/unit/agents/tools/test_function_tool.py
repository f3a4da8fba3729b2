"""function_tool: schemas inferred from type hints and docstrings; bad model arguments never raise."""

from __future__ import annotations

import asyncio
import doctest
import time
from typing import Literal

from rlkit.agents.tools import StatefulTool, Tool, ToolResult, function_tool
from rlkit.agents.tools import function as function_module
from rlkit.agents.tools.schema import parse_docstring, schema_problem


def search(
    query: str, top_k: int = 3, mode: Literal["bm25", "exact"] = "bm25", tags: list[str] | None = None
) -> list[str]:
    """Search the corpus.

    Longer text that is not part of the description.

    Args:
        query: What to look for,
            over two lines.
        top_k (int): How many hits.
        mode: The ranking.
        tags: Only documents with these tags.

    Returns:
        The hits.
    """
    return [query] * top_k


async def slow_double(x: float) -> float:
    """Double x after a while.

    Args:
        x: The number.
    """
    await asyncio.sleep(0.2)
    return 2 * x


def run(coro):  # noqa: ANN001, ANN201 - test helper
    return asyncio.run(coro)


def test_schema_from_hints_and_docstring() -> None:
    tool = function_tool(search)
    assert isinstance(tool, Tool)
    assert schema_problem(tool.schema) is None
    function = tool.schema["function"]
    assert function["name"] == "search" and function["description"] == "Search the corpus."
    params = function["parameters"]
    assert params["required"] == ["query"]
    assert params["properties"]["query"] == {
        "type": "string",
        "description": "What to look for, over two lines.",
    }
    assert params["properties"]["top_k"] == {"type": "integer", "description": "How many hits.", "default": 3}
    assert params["properties"]["mode"]["enum"] == ["bm25", "exact"]
    assert params["properties"]["mode"]["type"] == "string"
    assert params["properties"]["tags"]["type"] == "array"
    assert params["properties"]["tags"]["items"] == {"type": "string"}
    assert function_tool(search, name="find").schema["function"]["name"] == "find"


def test_calls_and_bad_arguments() -> None:
    tool = function_tool(search)
    assert run(tool.execute("a", {"query": "x", "top_k": 2})).text == '["x", "x"]'
    cases = {
        "missing argument(s): query": {},
        "unknown argument(s): limit": {"query": "x", "limit": 1},
        "argument 'top_k' must be integer": {"query": "x", "top_k": "2"},
        "argument 'top_k' must be integer, got bool": {"query": "x", "top_k": True},
        "argument 'mode' must be one of 'bm25', 'exact'": {"query": "x", "mode": "fuzzy"},
        "argument 'tags'[1] must be string": {"query": "x", "tags": ["a", 2]},
        "arguments must be a JSON object": ["x"],
    }
    for expected, arguments in cases.items():
        result = run(tool.execute("a", arguments))  # type: ignore[arg-type]
        assert result.error is not None and expected in result.error, (arguments, result.error)
    assert run(tool.execute("a", {"query": "x", "tags": None})).error is None


def test_exceptions_in_the_function_become_errors() -> None:
    def divide(a: float, b: float) -> float:
        """Divide."""
        return a / b

    tool = function_tool(divide)
    assert run(tool.execute("a", {"a": 1, "b": 4})).text == "0.25"
    result = run(tool.execute("a", {"a": 1, "b": 0}))
    assert result.error == "divide: ZeroDivisionError: float division by zero"


def test_async_functions_do_not_block_each_other() -> None:
    tool = function_tool(slow_double)

    async def many() -> list[ToolResult]:
        return await asyncio.gather(*(tool.execute(str(i), {"x": i}) for i in range(10)))

    start = time.monotonic()
    results = run(many())
    assert time.monotonic() - start < 1.5  # ten 0.2 s sleeps overlap
    assert [r.text for r in results] == [str(2.0 * i) for i in range(10)]


def test_stateful_tool_lifecycle_and_reward() -> None:
    class Counter(StatefulTool):
        name = "count"
        schema = {
            "type": "function",
            "function": {
                "name": "count",
                "description": "Count.",
                "parameters": {"type": "object", "properties": {}},
            },
        }

        def new_state(self, target: int = 2) -> dict[str, int]:
            return {"calls": 0, "target": target}

        async def call(self, state: dict[str, int], arguments: dict) -> str:  # type: ignore[override]
            state["calls"] += 1
            return str(state["calls"])

        def trajectory_reward(self, state: dict[str, int]) -> float:
            return float(state["calls"] == state["target"])

    tool = Counter()
    assert isinstance(tool, Tool)

    async def episode() -> tuple[list[str], float, float]:
        await tool.create("a", target=2)
        await tool.create("b", target=5)
        texts = [(await tool.execute("a", {})).text for _ in range(2)]
        await tool.execute("b", {})
        rewards = (await tool.reward("a"), await tool.reward("b"))
        await tool.release("a")
        await tool.release("a")
        return texts, *rewards

    assert run(episode()) == (["1", "2"], 1.0, 0.0)
    assert "a" not in tool._states and run(tool.reward("a")) == 0.0


def test_docstring_parser_handles_typed_and_sectioned_args() -> None:
    description, args = parse_docstring(search.__doc__)
    assert description == "Search the corpus."
    assert set(args) == {"query", "top_k", "mode", "tags"}


def test_module_doctest() -> None:
    assert doctest.testmod(function_module).failed == 0
