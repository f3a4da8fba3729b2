"""Tools from plain Python functions, and the base class of stateful tools.

>>> def add(a: int, b: int = 1) -> int:
...     '''Add two integers.
...
...     Args:
...         a: The first term.
...         b: The second term.
...     '''
...     return a + b
>>> tool = function_tool(add)
>>> tool.schema["function"]["parameters"]["required"]
['a']
>>> import asyncio
>>> asyncio.run(tool.execute("t0", {"a": 2})).text
'3'
>>> asyncio.run(tool.execute("t0", {"a": "two"})).error
"add: argument 'a' must be integer, got str 'two'"
"""

from __future__ import annotations

import asyncio
import inspect
import json
import typing
from collections.abc import Callable
from typing import Any

from rlkit.agents.tools.base import ToolResult
from rlkit.agents.tools.schema import argument_problem, infer_schema


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    """``ExcType: message`` on one line, cut to ``limit`` characters (what the model reads)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def result_text(value: Any) -> str:
    """A tool function's return value as the tool message's text (JSON for plain containers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple, int, float, bool)) or value is None:
        try:
            return json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            pass
    return str(value)


class StatefulTool:
    """Base class of tools that keep state per trajectory (``create`` / ``execute`` / ``release``).

    Subclasses set ``name`` and ``schema`` (or pass them in), override :meth:`new_state` to build a
    trajectory's state from the row's ``tools_kwargs`` and :meth:`call` to run one validated call;
    :meth:`trajectory_reward` is the optional per-tool reward. Arguments are checked against the
    schema before :meth:`call` runs, and an exception in :meth:`call` becomes the result's error.

    Attributes:
        name: The function name the model calls.
        schema: The OpenAI function-tool schema.
    """

    name: str = ""
    schema: dict[str, Any] = {}

    def __init__(self, name: str | None = None, schema: dict[str, Any] | None = None) -> None:
        if schema is not None:
            self.schema = schema
        if name is not None:
            self.name = name
        elif self.schema:  # a given schema's name wins over the class's default
            self.name = self.schema["function"]["name"]
        if self.schema and self.schema["function"]["name"] != self.name:
            self.schema = {**self.schema, "function": {**self.schema["function"], "name": self.name}}
        self._states: dict[str, Any] = {}

    def new_state(self, **kwargs: Any) -> Any:
        """The state of a new trajectory (default: the ``tools_kwargs`` dict itself)."""
        return dict(kwargs)

    def state(self, instance_id: str) -> Any:
        """The state of trajectory ``instance_id`` (created on first use with no kwargs)."""
        if instance_id not in self._states:
            self._states[instance_id] = self.new_state()
        return self._states[instance_id]

    async def call(self, state: Any, arguments: dict[str, Any]) -> ToolResult | Any:
        """Run one call with checked arguments; return a ToolResult or a value to show as text."""
        raise NotImplementedError

    def trajectory_reward(self, state: Any) -> float:
        """The tool's reward for one trajectory (0 unless a subclass scores it)."""
        return 0.0

    async def create(self, instance_id: str, **kwargs: Any) -> None:
        """Set up trajectory ``instance_id`` from the row's ``extra_info.tools_kwargs[name]``."""
        self._states[instance_id] = self.new_state(**kwargs)

    async def execute(self, instance_id: str, arguments: dict[str, Any]) -> ToolResult:
        """Check ``arguments`` against the schema and run :meth:`call`; never raises for model input."""
        problem = argument_problem(self.schema, arguments)
        if problem:
            return ToolResult(text="", error=f"{self.name}: {problem}")
        try:
            value = await self.call(self.state(instance_id), arguments)
        except Exception as exc:
            return ToolResult(text="", error=f"{self.name}: {describe_exception(exc)}")
        return value if isinstance(value, ToolResult) else ToolResult(text=result_text(value))

    async def reward(self, instance_id: str) -> float:
        """The per-tool reward of trajectory ``instance_id`` (0 for one never created)."""
        if instance_id not in self._states:
            return 0.0
        return float(self.trajectory_reward(self._states[instance_id]))

    async def release(self, instance_id: str) -> None:
        """Drop trajectory ``instance_id``'s state (safe to call twice)."""
        self._states.pop(instance_id, None)


class FunctionTool(StatefulTool):
    """A stateless tool that calls one Python function (sync functions run in a worker thread).

    Args:
        fn: The function; its type hints and Google docstring give the schema.
        name: The name the model calls (default: the function's name).
        description: Overrides the docstring's first paragraph.
    """

    def __init__(
        self, fn: Callable[..., Any], name: str | None = None, description: str | None = None
    ) -> None:
        self.fn = fn
        super().__init__(schema=infer_schema(fn, name=name, description=description))
        self._floats = {
            key for key, hint in typing.get_type_hints(fn).items() if hint is float or hint == float | None
        }

    async def call(self, state: Any, arguments: dict[str, Any]) -> ToolResult | Any:
        """Call the function (a coroutine function is awaited, a plain one runs in a thread)."""
        kwargs = {
            k: float(v) if k in self._floats and isinstance(v, int) else v for k, v in arguments.items()
        }
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(**kwargs)
        return await asyncio.to_thread(self.fn, **kwargs)


def function_tool(
    fn: Callable[..., Any], name: str | None = None, description: str | None = None
) -> FunctionTool:
    """Make ``fn`` (sync or async, with type hints and a Google docstring) a :class:`Tool`.

    Args:
        fn: The function the model calls; its parameters become the schema's properties
            (``Optional``, ``list[...]``, ``Literal[...]`` understood; a default makes one optional).
        name: The name the model calls (default: ``fn.__name__``).
        description: The tool's description (default: the docstring's first paragraph).

    Returns:
        The tool. Bad model arguments and exceptions inside ``fn`` come back as
        ``ToolResult.error``; they never raise.

    Raises:
        TypeError: ``fn`` has a parameter that JSON cannot describe, or ``*args`` / ``**kwargs``.
    """
    return FunctionTool(fn, name=name, description=description)
