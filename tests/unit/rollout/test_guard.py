"""rlkit's launcher (rlkit.rollout.guard): a command it runs never outlives its owner.

Real processes and signals: an owner process starts a "server" (a Python process that starts a
grandchild, as vLLM's API server starts its engine core) under the launcher; the owner is killed
with SIGKILL, and both the server and its grandchild are gone within a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlkit.rollout import guard
from rlkit.rollout.server_engine import group_alive

# A server that starts a grandchild and prints both pids, then waits to be stopped.
SERVER = (
    "import json, subprocess, sys, time; "
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
    "print(json.dumps({'server': __import__('os').getpid(), 'grandchild': g.pid}), flush=True); "
    "time.sleep(300)"
)
# The owner: loads the launcher by path (as the rollout worker does through server_engine),
# starts the server under it, forwards its pids, then waits to be killed.
OWNER = """
import importlib.util, json, os, sys, time
spec = importlib.util.spec_from_file_location("guard", sys.argv[1])
guard = importlib.util.module_from_spec(spec); spec.loader.exec_module(guard)
proc = guard.guarded_popen([sys.executable, "-c", sys.argv[2]], stdout=open(sys.argv[3], "wb"), env=dict(os.environ))
while not open(sys.argv[3]).read().strip():
    time.sleep(0.05)
pids = json.loads(open(sys.argv[3]).read())
print(json.dumps({**pids, "group": proc.pid}), flush=True)
time.sleep(300)
"""
GONE_WITHIN_S = 5.0 + guard.GRACE_S  # the launcher polls every 0.2 s; a SIGTERM'd sleeper exits at once


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pids: list[int], pgid: int) -> float:
    start = time.monotonic()
    while time.monotonic() - start < GONE_WITHIN_S:
        if not any(_alive(p) for p in pids) and not group_alive(pgid):
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"still alive after {GONE_WITHIN_S} s: {[p for p in pids if _alive(p)]}")


def test_the_server_dies_with_its_owner_even_on_kill_9(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, guard.__file__, SERVER, str(tmp_path / "server.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pids = json.loads(owner.stdout.readline())  # type: ignore[union-attr]
        assert _alive(pids["server"]) and _alive(pids["grandchild"])
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=10)
        _wait_gone([pids["server"], pids["grandchild"], pids["group"]], pids["group"])
    finally:
        owner.kill()
        owner.wait(timeout=10)


def test_the_launcher_exits_with_the_command_and_stops_its_leftovers(tmp_path: Path) -> None:
    leftover = tmp_path / "leftover.pid"
    script = (
        "import subprocess, sys; "
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        f"open({str(leftover)!r}, 'w').write(str(g.pid)); sys.exit(3)"
    )
    proc = guard.guarded_popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, env=dict(os.environ)
    )
    assert proc.wait(timeout=30) == 3
    _wait_gone([int(leftover.read_text())], proc.pid)
    proc.stdin.close()  # type: ignore[union-attr]


def test_sigterm_to_the_group_stops_the_command_and_then_the_launcher(tmp_path: Path) -> None:
    proc = guard.guarded_popen(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        stdout=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=GONE_WITHIN_S) == 128 + signal.SIGTERM
    assert not group_alive(proc.pid)
    proc.stdin.close()  # type: ignore[union-attr]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_launcher_takes_the_command_with_it(tmp_path: Path) -> None:
    """SIGKILL to the launcher itself (Ray cleaning up a dead worker's processes): the command,
    armed with PR_SET_PDEATHSIG, is killed by the kernel at once (vLLM's engine core then follows
    its server on its own)."""
    pid_file = tmp_path / "command.pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    proc = guard.guarded_popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, env=dict(os.environ)
    )
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        command = int(pid_file.read_text())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        start = time.monotonic()
        while _alive(command) and time.monotonic() - start < GONE_WITHIN_S:
            time.sleep(0.05)
        assert not _alive(command), "the command outlived its killed launcher"
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        if pid_file.is_file() and pid_file.read_text() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
