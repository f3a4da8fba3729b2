"""The sandboxed Python interpreter tool (``python``; ``code_interpreter`` is verl's name for it).

Every call runs the model's code in a new limited process (:mod:`rlkit.agents.tools.sandbox`),
never in the trainer's or the rollout worker's process, and awaits it without blocking the event
loop, so other trajectories keep generating meanwhile. The model reads back what the code
printed (stdout, then stderr with the traceback's end); a run stopped by a limit is a tool error
(``timed_out`` for the wall-time limit).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from rlkit.agents.tools.base import ToolResult
from rlkit.agents.tools.function import StatefulTool
from rlkit.agents.tools.sandbox import SandboxLimits, SandboxResult, run_python

_LIMIT_ERRORS = {
    "timeout": "the code ran past its wall-time limit of {wall} s and was killed",
    "cpu_limit": "the code used more than its CPU-time limit of {cpu} s and was killed",
    "memory_limit": "the code ran out of memory (limit {memory} MB)",
}


def _schema(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": "run python code and return what it prints",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "the python code to run"}},
                "required": ["code"],
            },
        },
    }


class PythonTool(StatefulTool):
    """Run Python code in a sandboxed process: ``python(code)`` -> its output.

    Args:
        cpu_limit_s: CPU seconds a call may use.
        wall_limit_s: Seconds from start to kill.
        memory_limit_mb: Memory a call may add to the bare interpreter's, in MiB.
        max_output_chars: Characters kept of stdout and of stderr each.
        max_concurrency: Calls running at once (per event loop); the rest wait their turn.
        network_namespace: Try an empty network namespace (an audit hook refuses sockets anyway).
        schema: Overrides the default schema; its first parameter is taken as the code.
    """

    name = "python"

    def __init__(
        self,
        cpu_limit_s: float = 5.0,
        wall_limit_s: float = 10.0,
        memory_limit_mb: int = 512,
        max_output_chars: int = 2000,
        max_concurrency: int | None = None,
        network_namespace: bool = True,
        schema: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(schema=schema or _schema(self.name))
        self.limits = SandboxLimits(
            cpu_limit_s=cpu_limit_s,
            wall_limit_s=wall_limit_s,
            memory_limit_mb=memory_limit_mb,
            max_output_chars=max_output_chars,
            network_namespace=network_namespace,
        )
        self.max_concurrency = max_concurrency or min(4, os.cpu_count() or 1)
        self._argument = next(iter(self.schema["function"]["parameters"]["properties"]), "code")
        self._gates: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    def _gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._gates:
            self._gates = {lp: g for lp, g in self._gates.items() if not lp.is_closed()}
            self._gates[loop] = asyncio.Semaphore(self.max_concurrency)
        return self._gates[loop]

    async def call(self, state: Any, arguments: dict[str, Any]) -> ToolResult:
        """Run the code argument in the sandbox."""
        code = arguments.get(self._argument)
        code = code if isinstance(code, str) else str(code)
        async with self._gate():
            result = await run_python(code, self.limits)
        return self.to_tool_result(result)

    def to_tool_result(self, result: SandboxResult) -> ToolResult:
        """What the model reads: the output, plus a one-line error when a limit stopped the code."""
        text = result.stdout
        if result.stderr:
            text = f"{text}\n{result.stderr}" if text else result.stderr
        metrics = {
            "sandbox_wall_s": result.wall_s,
            "sandbox_netns": float(result.network_guard == "namespace"),
        }
        if result.status in _LIMIT_ERRORS:
            message = _LIMIT_ERRORS[result.status].format(
                wall=self.limits.wall_limit_s, cpu=self.limits.cpu_limit_s, memory=self.limits.memory_limit_mb
            )
            return ToolResult(
                text=text,
                error=f"{self.name}: {message}",
                timed_out=result.status == "timeout",
                metrics=metrics,
            )
        return ToolResult(text=text if text else "(no output)", metrics=metrics)


class CodeInterpreterTool(PythonTool):
    """:class:`PythonTool` under verl's name, ``code_interpreter``."""

    name = "code_interpreter"
