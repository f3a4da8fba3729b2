"""A client of a SandboxFusion service's ``/run_code`` API, for users who run that service.

It takes verl's ``SandboxFusionTool`` config keys unchanged (``sandbox_fusion_url``,
``default_timeout``, ``default_language``, ``memory_limit_mb``, ``num_workers``; verl's
``rate_limit`` / ``enable_global_rate_limit`` are accepted and ignored: ``num_workers`` bounds the
calls in flight). Each call POSTs ``{"code", "language", "run_timeout", "compile_timeout",
"memory_limit_MB"}`` and shows the model the run's stdout and stderr. The HTTP request runs in a
worker thread (standard library only), with a deadline of the run timeout plus ``request_slack_s``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from rlkit.agents.tools.base import ToolResult
from rlkit.agents.tools.function import StatefulTool
from rlkit.errors import UserError


def _schema() -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": "code_interpreter",
            "description": "run code and return what it prints",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "the code to run"}},
                "required": ["code"],
            },
        },
    }


def run_code(url: str, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """POST ``payload`` to a SandboxFusion ``/run_code`` URL; the decoded JSON reply."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - a URL the user configured
        return dict(json.loads(response.read().decode("utf-8", errors="replace")))


class SandboxFusionTool(StatefulTool):
    """Run code on a SandboxFusion server: ``code_interpreter(code)`` -> its output.

    Args:
        sandbox_fusion_url: The service's ``/run_code`` URL.
        default_timeout: Run (and compile) timeout in seconds sent to the service.
        default_language: Language of the code.
        memory_limit_mb: Memory limit sent to the service.
        num_workers: Calls in flight at once (per event loop).
        max_output_chars: Characters of output kept.
        request_slack_s: Seconds the HTTP request may take past the run timeout.
        rate_limit: verl's key; accepted, unused.
        enable_global_rate_limit: verl's key; accepted, unused.
        schema: Overrides the default schema.
    """

    name = "code_interpreter"

    def __init__(
        self,
        sandbox_fusion_url: str = "",
        default_timeout: float = 30,
        default_language: str = "python",
        memory_limit_mb: int = 1024,
        num_workers: int = 10,
        max_output_chars: int = 4000,
        request_slack_s: float = 10.0,
        rate_limit: int | None = None,
        enable_global_rate_limit: bool | None = None,
        schema: dict[str, Any] | None = None,
    ) -> None:
        if not sandbox_fusion_url:
            raise UserError(
                "sandbox_fusion: no sandbox_fusion_url in the tool's config",
                hint="set config.sandbox_fusion_url to your service's /run_code URL, or use the local python tool",
            )
        super().__init__(schema=schema or _schema())
        self.url, self.timeout, self.language = sandbox_fusion_url, default_timeout, default_language
        self.memory_limit_mb, self.max_output_chars, self.slack = (
            memory_limit_mb,
            max_output_chars,
            request_slack_s,
        )
        self._gates: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self._num_workers = num_workers

    async def call(self, state: Any, arguments: dict[str, Any]) -> ToolResult:
        """Send the code to the service and return its output."""
        code = str(arguments.get("code", next(iter(arguments.values()), "")))
        payload = {
            "code": code,
            "language": arguments.get("language", self.language),
            "run_timeout": self.timeout,
            "compile_timeout": self.timeout,
            "memory_limit_MB": self.memory_limit_mb,
        }
        loop = asyncio.get_running_loop()
        gate = self._gates.setdefault(loop, asyncio.Semaphore(self._num_workers))
        try:
            async with gate:
                reply = await asyncio.to_thread(run_code, self.url, payload, self.timeout + self.slack)
        except TimeoutError:
            return ToolResult(
                text="", error=f"{self.name}: the sandbox service did not answer in time", timed_out=True
            )
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return ToolResult(text="", error=f"{self.name}: the sandbox service failed ({exc})")
        return self.to_tool_result(reply)

    def to_tool_result(self, reply: dict[str, Any]) -> ToolResult:
        """The model's view of a ``/run_code`` reply (stdout then stderr; errors for failed runs)."""
        run = reply.get("run_result") or {}
        compiled = reply.get("compile_result") or {}
        text = (run.get("stdout") or "") + (run.get("stderr") or "") or (compiled.get("stderr") or "")
        if len(text) > self.max_output_chars:
            text = text[: self.max_output_chars] + f"\n...(truncated to {self.max_output_chars} characters)"
        status = run.get("status")
        metrics = {"sandbox_wall_s": float(run.get("execution_time") or 0.0)}
        if status == "TimeLimitExceeded":
            return ToolResult(
                text=text,
                error=f"{self.name}: the code ran past its time limit of {self.timeout} s",
                timed_out=True,
                metrics=metrics,
            )
        if status != "Finished" and reply.get("status") != "Success" and not text:
            message = reply.get("message") or status or reply.get("status") or "no run result"
            return ToolResult(
                text="", error=f"{self.name}: the sandbox service reported {message}", metrics=metrics
            )
        return ToolResult(text=text or "(no output)", metrics=metrics)
