"""The one interface every tool implements, stateless or stateful.

A tool has an OpenAI function-tool schema (what the model sees in the chat template's ``tools``)
and four async calls that follow verl's ``BaseTool`` life cycle, so verl tools YAML files map onto
it: ``create`` once per trajectory, ``execute`` per call, ``reward`` at the end, ``release`` always.
Plain Python functions become tools through ``rlkit.agents.tools.function_tool`` (schema inferred
from type hints and the docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass
class ToolResult:
    """What one tool call returns to the agent loop.

    Attributes:
        text: The tool message's content shown to the model (already truncated by the tool if it
            has its own limit; the loop applies ``rollout.multi_turn`` limits on top).
        reward: A per-call reward the tool assigns (0 when it has none).
        error: A one-line error shown to the model instead of a result (bad arguments, an
            exception in the tool, a sandbox limit); ``None`` on success.
        timed_out: The call hit its deadline (counted in the metrics apart from other errors).
        metrics: Numbers the tool wants logged (summed or averaged by the loop's metrics).
    """

    text: str
    reward: float = 0.0
    error: str | None = None
    timed_out: bool = False
    metrics: dict[str, float] | None = None


@runtime_checkable
class Tool(Protocol):
    """A tool the model can call by name.

    Attributes:
        name: The function name the model calls (``schema["function"]["name"]``).
        schema: The OpenAI function-tool schema:
            ``{"type": "function", "function": {"name", "description", "parameters"}}``.
    """

    name: str
    schema: dict[str, Any]

    async def create(self, instance_id: str, **kwargs: Any) -> None:
        """Set up the state of one trajectory (``kwargs``: the row's ``extra_info.tools_kwargs[name]``)."""
        ...

    async def execute(self, instance_id: str, arguments: dict[str, Any]) -> ToolResult:
        """Run one call with the model's parsed JSON arguments; never raises for bad model input."""
        ...

    async def reward(self, instance_id: str) -> float:
        """The tool's reward for the whole trajectory (0 when it has none)."""
        ...

    async def release(self, instance_id: str) -> None:
        """Free the trajectory's state (called even when the trajectory failed)."""
        ...
