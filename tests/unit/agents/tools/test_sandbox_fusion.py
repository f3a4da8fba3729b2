"""The SandboxFusion client against a small /run_code server this test starts on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlkit.agents.tools.registry import load_tools
from rlkit.agents.tools.sandbox_fusion import SandboxFusionTool
from rlkit.errors import UserError

SEEN: list[dict] = []


class RunCode(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        SEEN.append(payload)
        if payload["code"] == "loop":
            run = {"status": "TimeLimitExceeded", "stdout": "", "stderr": "", "return_code": None}
        else:
            run = {
                "status": "Finished",
                "stdout": f"ran {len(payload['code'])} chars\n",
                "stderr": "",
                "return_code": 0,
                "execution_time": 0.01,
            }
        body = json.dumps({"status": "Success", "message": "", "run_result": run}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), RunCode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/run_code"
    server.shutdown()
    server.server_close()


def test_verl_config_runs_code_on_the_service(tmp_path: Path, url: str) -> None:
    config = tmp_path / "tools.yaml"
    config.write_text(f"""
tools:
  - class_name: "verl.tools.sandbox_fusion_tools.SandboxFusionTool"
    config:
      sandbox_fusion_url: "{url}"
      num_workers: 10
      enable_global_rate_limit: true
      rate_limit: 10
      default_timeout: 30
      default_language: "python"
      memory_limit_mb: 1024
      type: native
    tool_schema:
      type: "function"
      function:
        name: "code_interpreter"
        description: "A tool for executing code."
        parameters:
          type: "object"
          properties:
            code:
              type: "string"
              description: "The code to execute."
          required: ["code"]
""")
    tool = load_tools([str(config)])["code_interpreter"]
    assert isinstance(tool, SandboxFusionTool)
    result = asyncio.run(tool.execute("t", {"code": "print(1)"}))
    assert result.error is None and result.text == "ran 8 chars\n"
    assert SEEN[-1] == {
        "code": "print(1)",
        "language": "python",
        "run_timeout": 30,
        "compile_timeout": 30,
        "memory_limit_MB": 1024,
    }
    late = asyncio.run(tool.execute("t", {"code": "loop"}))
    assert late.timed_out and "time limit of 30 s" in late.error


def test_unreachable_service_is_a_tool_error_not_a_crash() -> None:
    tool = SandboxFusionTool(
        sandbox_fusion_url="http://127.0.0.1:9/run_code", default_timeout=1, request_slack_s=1
    )
    result = asyncio.run(tool.execute("t", {"code": "print(1)"}))
    assert result.error is not None and result.error.startswith("code_interpreter: the sandbox service")


def test_missing_url_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no sandbox_fusion_url"):
        load_tools(["sandbox_fusion"])
