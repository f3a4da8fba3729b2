"""One trajectory's tools: their life cycle (create / execute / reward / release) and its calls.

The row picks its tools (``extra_info.tool_selection``, a list of names: default all; a name that
is not loaded is refused) and their per-trajectory arguments (``extra_info.tools_kwargs[name]``:
verl's ``{"create_kwargs": {...}}`` or the kwargs themselves; an environment's
``extra_info.env_kwargs`` otherwise), both read by the helpers of
:mod:`rlkit.agents.tools.registry`. A call that
cannot run (unknown tool, bad JSON, too many calls in one turn, an exception, a deadline) becomes
an error message to the model, recorded and counted, never a crash.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from rlkit.agents.parsers import ParsedCall, ParsedTurn
from rlkit.agents.tools.base import Tool, ToolResult
from rlkit.agents.tools.registry import create_kwargs, select_tools
from rlkit.agents.trajectory import ToolCallRecord

if TYPE_CHECKING:
    from rlkit.agents.loops import MultiTurnSettings


def truncate(text: str, limit: int, side: str) -> str:
    """``text`` cut to ``limit`` characters, keeping its ``left`` or ``right`` end or both (``middle``)."""
    if len(text) <= limit:
        return text
    marker = "...(truncated)..."
    if side == "left":
        return text[:limit] + marker
    if side == "right":
        return marker + text[-limit:]
    half = limit // 2
    return text[:half] + marker + text[len(text) - (limit - half) :]


class ToolSession:
    """The tools of one trajectory, created on :meth:`start` and released on :meth:`close`."""

    def __init__(
        self,
        tools: dict[str, Tool],
        settings: MultiTurnSettings,
        extra_info: dict[str, Any],
        instance_id: str,
    ) -> None:
        self.tools = select_tools(tools, extra_info)
        self.settings = settings
        self.extra_info = extra_info
        self.instance_id = instance_id
        self.records: list[ToolCallRecord] = []
        self._created: list[Tool] = []

    def schemas(self) -> list[dict[str, Any]]:
        """The OpenAI schemas the prompt's tools preamble lists."""
        return [t.schema for t in self.tools.values()]

    async def start(self) -> None:
        for name, tool in self.tools.items():
            await tool.create(self.instance_id, **self._create_kwargs(name))
            self._created.append(tool)

    def _create_kwargs(self, name: str) -> dict[str, Any]:
        if name in (self.extra_info.get("tools_kwargs") or {}):
            return create_kwargs(self.extra_info, name)
        return dict(self.extra_info.get("env_kwargs") or {})

    async def final_reward(self) -> float:
        """The sum of the tools' trajectory rewards (``Tool.reward``)."""
        return float(sum([await t.reward(self.instance_id) for t in self._created]))

    async def close(self) -> None:
        for tool in self._created:
            try:
                await tool.release(self.instance_id)
            except Exception:  # a tool's cleanup failing must not lose the trajectory
                pass

    def assistant_message(self, parsed: ParsedTurn) -> dict[str, Any]:
        """The OpenAI-style assistant message of a parsed turn."""
        message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
        calls = [c for c in parsed.calls if c.error is None]
        if calls:
            message["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
            ]
        return message

    async def run_calls(self, calls: list[ParsedCall], turn: int) -> tuple[list[dict[str, Any]], float]:
        """Run a turn's calls (concurrently); returns their tool messages and the calls' rewards."""
        limit = self.settings.max_parallel_calls
        results = await asyncio.gather(*(self._one(c, turn, i >= limit) for i, c in enumerate(calls)))
        self.records.extend(record for record, _ in results)  # in the order the model made them
        messages = [
            {"role": "tool", "name": c.name, "content": record.result}
            for c, (record, _) in zip(calls, results, strict=True)
        ]
        return messages, float(sum(r for _, r in results))

    async def _one(self, call: ParsedCall, turn: int, over_limit: bool) -> tuple[ToolCallRecord, float]:
        started = time.perf_counter()
        result = await self._execute(call, over_limit)
        record = ToolCallRecord(
            name=call.name,
            arguments=call.arguments,
            result="",
            error=result.error,
            timed_out=result.timed_out,
            latency_s=time.perf_counter() - started,
            turn=turn,
            malformed=call.error is not None,
            metrics={k: float(v) for k, v in (result.metrics or {}).items()},
        )
        s = self.settings
        text = f"Error: {result.error}" if result.error else result.text
        record.result = truncate(text, s.max_tool_response_length, s.truncation_side)
        return record, float(result.reward)

    async def _execute(self, call: ParsedCall, over_limit: bool) -> ToolResult:
        if call.error is not None:
            return ToolResult(text="", error=call.error)
        if over_limit:
            return ToolResult(
                text="", error=f"at most {self.settings.max_parallel_calls} tool call(s) per turn"
            )
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            return ToolResult(text="", error=f"no tool named {call.name!r} (tools: {known})")
        try:
            return await asyncio.wait_for(
                tool.execute(self.instance_id, call.arguments), timeout=self.settings.tool_timeout_s
            )
        except asyncio.TimeoutError:
            return ToolResult(
                text="", error=f"the call took longer than {self.settings.tool_timeout_s:g} s", timed_out=True
            )
        except Exception as exc:  # a tool's bug is the model's error message, not the run's crash
            return ToolResult(text="", error=f"{type(exc).__name__}: {exc}")
