"""The pieces of a clean failure and exit that need no Ray: causes, the address check, the reaper."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rlkit.controller import causes
from rlkit.controller.pool import check_ray_address
from rlkit.errors import UserError

REAPER = Path(causes.__file__).with_name("reaper.py")


def test_root_cause_prefers_user_errors_then_os_errors() -> None:
    try:
        try:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), "/runs/a/config.yaml")
        except OSError as exc:
            raise RuntimeError("saving failed") from exc
    except RuntimeError as exc:
        assert causes.describe(exc) == "permission denied: /runs/a/config.yaml (PermissionError errno 13)"
    try:
        try:
            raise ValueError("inner")
        except ValueError:
            raise UserError("bad key", hint="fix it") from None
    except UserError as exc:
        assert causes.describe(exc) == "bad key — fix it"
    assert causes.describe(KeyError("x")) == "KeyError: 'x'"
    assert causes.describe(OSError(errno.EROFS, "Read-only file system", "/ro")) == (
        "read-only file system: /ro (OSError errno 30)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_ray_address_fails_in_seconds() -> None:
    start = time.monotonic()
    with pytest.raises(
        UserError, match=r"hardware.ray_address=127.0.0.1:\d+: nothing answers there \(connection refused at "
    ):
        check_ray_address(f"127.0.0.1:{_free_port()}", 2.0)
    with pytest.raises(UserError, match="cannot resolve the host 'no-such-host.invalid'"):
        check_ray_address("no-such-host.invalid:6379", 2.0)
    with pytest.raises(UserError, match="is not host:port"):
        check_ray_address("127.0.0.1", 2.0)
    assert time.monotonic() - start < 8


def test_listening_address_passes() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_ray_address(f"127.0.0.1:{server.getsockname()[1]}", 2.0)


_DRIVER = """
import subprocess, sys, time
# a 'Ray' child (the reaper knows Ray's processes by their command line) and an unrelated one
ray_child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "/x/ray/fake_raylet"])
other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "unrelated"])
reaper = subprocess.Popen([sys.executable, "-I", sys.argv[1], str(__import__("os").getpid()),
                           repr(__import__("psutil").Process().create_time())], start_new_session=True)
time.sleep(1.5)  # the reaper records the children
print(ray_child.pid, other.pid, reaper.pid, flush=True)
time.sleep(60)
"""


def test_reaper_kills_the_ray_processes_of_a_killed_driver() -> None:
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(REAPER)], stdout=subprocess.PIPE, text=True)
    assert driver.stdout is not None
    ray_pid, other_pid, reaper_pid = map(int, driver.stdout.readline().split())
    other = psutil.Process(other_pid)
    try:
        driver.kill()  # kill -9: no cleanup of its own
        driver.wait()
        _, alive = psutil.wait_procs([psutil.Process(ray_pid), psutil.Process(reaper_pid)], timeout=6)
        assert not alive, f"left behind: {alive}"
        assert other.is_running()  # not Ray's: left alone
    finally:
        other.kill()
        for pid in (ray_pid, reaper_pid):
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
