"""The sandboxed Python tool: network refused, CPU / wall / memory limits, output cut, temp dir gone.

Every run is a real child process with real rlimits and signals. Time bounds are the configured
limit plus a fixed allowance for starting and killing an interpreter on a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from rlkit.agents.tools.python import PythonTool
from rlkit.agents.tools.registry import load_tools
from rlkit.agents.tools.sandbox import SandboxLimits, run_python

SLACK_S = 5.0  # interpreter start + kill + reap, under load


def run(coro):  # noqa: ANN001, ANN201 - test helper
    return asyncio.run(coro)


def python(code: str, **limits: float) -> object:
    return run(run_python(code, SandboxLimits(**{"wall_limit_s": 20.0, **limits})))


def test_runs_code_and_returns_its_output() -> None:
    tool = load_tools(["python"])["python"]
    result = run(tool.execute("t", {"code": "print(6 * 7)"}))
    assert result.error is None and result.text == "42\n"
    failed = run(tool.execute("t", {"code": "1/0"}))
    assert failed.error is None and failed.text.rstrip().endswith("ZeroDivisionError: division by zero")
    assert run(tool.execute("t", {})).error == "python: missing argument(s): code"


@pytest.mark.parametrize("namespace", [True, False])
def test_network_is_refused(namespace: bool) -> None:
    code = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\ns.connect(('127.0.0.1', 9))"
    result = python(code, network_namespace=namespace)
    assert result.status == "error"
    assert "PermissionError: network access is disabled in this sandbox (socket.__new__)" in result.stderr
    if not namespace:
        assert result.network_guard == "audit"


def test_network_namespace_has_only_loopback_where_the_kernel_allows_it() -> None:
    result = python("print(open('/proc/self/net/dev').read())")
    if result.network_guard != "namespace":
        pytest.skip("this kernel refuses unprivileged user+network namespaces: the audit hook alone applies")
    interfaces = [line.split(":")[0].strip() for line in result.stdout.splitlines()[2:] if ":" in line]
    assert interfaces == ["lo"]


def test_runaway_loop_is_killed_at_its_cpu_limit() -> None:
    start = time.monotonic()
    result = python("while True:\n    pass", cpu_limit_s=1, wall_limit_s=60)
    assert result.status == "cpu_limit"
    assert time.monotonic() - start < 60  # the CPU limit, not the wall limit, ended it


def test_sleeping_code_is_killed_at_its_wall_limit() -> None:
    tool = PythonTool(wall_limit_s=1.5)
    start = time.monotonic()
    result = run(tool.execute("t", {"code": "import time\nprint('started', flush=True)\ntime.sleep(60)"}))
    assert result.timed_out and "wall-time limit of 1.5 s" in result.error
    assert time.monotonic() - start < 1.5 + SLACK_S


@pytest.mark.parametrize(
    "code", ["x = bytearray(4 * 2**30)", "chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))"]
)
def test_allocation_bomb_is_stopped_at_its_memory_limit(code: str) -> None:
    tool = PythonTool(memory_limit_mb=128)
    result = run(tool.execute("t", {"code": code}))
    assert result.error == "python: the code ran out of memory (limit 128 MB)"


def test_code_cannot_signal_the_parent() -> None:
    result = python("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert "PermissionError: starting or signalling processes is disabled" in result.stderr
    assert python("import subprocess\nsubprocess.run(['true'])").status == "error"
    assert os.getpid() > 0  # still here


def test_output_is_truncated() -> None:
    result = python(
        "print('x' * 100000)\nimport sys\nprint('e' * 5000, 'END', file=sys.stderr)", max_output_chars=100
    )
    assert result.truncated and result.status == "output_limit"
    assert result.stdout.startswith("x" * 100) and "truncated to 100 characters" in result.stdout
    assert len(result.stdout) < 200 and result.stderr.rstrip().endswith("END")


def test_temp_dir_is_deleted_afterwards() -> None:
    result = python("import os\nopen('scratch.txt', 'w').write('hi')\nprint(os.getcwd())")
    workdir = Path(result.stdout.strip())
    assert workdir.name.startswith("rlkit-sandbox-") and not workdir.exists()
    killed = python("import os, time\nprint(os.getcwd(), flush=True)\ntime.sleep(60)", wall_limit_s=1.0)
    assert killed.status == "timeout"


def test_calls_run_concurrently_without_blocking_the_event_loop() -> None:
    tool = PythonTool(max_concurrency=4, wall_limit_s=20)

    async def main() -> tuple[float, int, list[str]]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        beat = asyncio.create_task(ticker())
        start = time.monotonic()
        results = await asyncio.gather(
            *(tool.execute(str(i), {"code": f"import time\ntime.sleep(1.5)\nprint({i})"}) for i in range(4))
        )
        elapsed = time.monotonic() - start
        beat.cancel()
        return elapsed, ticks, [r.text.strip() for r in results]

    elapsed, ticks, texts = run(main())
    assert texts == ["0", "1", "2", "3"]
    assert elapsed < 4 * 1.5  # the four sleeps overlapped
    assert ticks >= elapsed / 0.05 / 4  # the loop kept running while the children worked


def test_the_child_imports_only_the_limits_before_the_code() -> None:
    result = python("import sys\nprint(sorted(m for m in sys.modules if m.startswith(('rlkit', 'torch'))))")
    assert result.stdout.strip() == "['rlkit', 'rlkit.limits']"
