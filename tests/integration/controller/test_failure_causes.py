"""What reaches the driver when role code fails: the real cause in one line, a UserError as itself,
a frozen worker as a deadline naming the rank, and a dead driver's workers gone within a second.

One 1-worker group serves the failure tests that leave it usable; the SIGSTOP test breaks its own.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from rlkit.controller import ResourcePool, WorkerError, WorkerGroup, WorkerUserError, dispatch
from rlkit.errors import UserError

pytestmark = pytest.mark.usefixtures("ray_session")


class Failing:
    """Raises what checkpointing and user code raise in real runs."""

    @dispatch("broadcast")
    def disk_full(self, path: str) -> None:
        # what DCP raises when a shard write hits a full disk: its BaseException wrapping the OSError
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        except OSError as exc:
            raise CheckpointException(
                "save failed", {0: (exc, traceback.extract_tb(exc.__traceback__))}
            ) from None

    @dispatch("broadcast")
    def dcp_save(self, checkpoint_id: str) -> None:
        dcp.save({"w": torch.zeros(2)}, checkpoint_id=checkpoint_id)  # the real thing

    @dispatch("broadcast")
    def user_error(self) -> None:
        raise UserError("data.train_files: no such file 'x.parquet'", hint="run `rlkit data gsm8k` first")

    @dispatch("broadcast")
    def chained(self) -> None:
        try:
            open("/nonexistent-dir/shard.safetensors", "rb")  # noqa: SIM115
        except OSError as exc:
            raise RuntimeError("could not read the shard") from exc

    @dispatch("broadcast")
    def pid(self) -> int:
        return os.getpid()


@pytest.fixture(scope="module")
def group() -> Iterator[WorkerGroup]:
    g = WorkerGroup(ResourcePool(1, 1, "cpu"), {"f": Failing}, call_timeout_s=60)
    yield g
    g.shutdown()


def test_base_exception_from_checkpointing_names_the_disk(group: WorkerGroup) -> None:
    path = "/runs/x/checkpoints/step_3.tmp/actor/__0_0.distcp"
    with pytest.raises(WorkerError) as info:
        group.role("f").disk_full(path)
    line = str(info.value)
    assert "\n" not in line
    assert line == f"f.disk_full on rank 0: no space left on the device: {path} (OSError errno 28)"
    assert info.value.exc_type == "CheckpointException"
    assert "CheckpointException" in info.value.details()  # the whole remote traceback is kept


def test_real_dcp_failure_names_the_file(group: WorkerGroup, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WorkerError, match=rf"f\.dcp_save on rank 0: .*{blocker}/ck \(NotADirectoryError"):
        group.role("f").dcp_save(str(blocker / "ck"))


def test_chained_oserror_is_the_cause(group: WorkerGroup) -> None:
    with pytest.raises(WorkerError) as info:
        group.role("f").chained()
    assert str(info.value) == (
        "f.chained on rank 0: no such file or directory: /nonexistent-dir/shard.safetensors "
        "(FileNotFoundError errno 2)"
    )


def test_user_error_arrives_as_itself(group: WorkerGroup) -> None:
    with pytest.raises(UserError) as info:
        group.role("f").user_error()
    err = info.value
    assert isinstance(err, WorkerUserError) and isinstance(err, WorkerError)
    assert err.message == "data.train_files: no such file 'x.parquet'"
    assert err.hint == "run `rlkit data gsm8k` first"
    assert (err.role, err.method, err.rank) == ("f", "user_error", 0)
    assert group.role("f").pid() == group.pids  # every rank had returned: the group still works


def test_frozen_worker_overruns_naming_the_rank() -> None:
    with WorkerGroup(ResourcePool(1, 1, "cpu"), {"f": Failing}, call_timeout_s=60) as g:
        pid = g.pids[0]
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(WorkerError) as info:
                g.call("f", "pid", timeout_s=1.0)
            took = time.monotonic() - start
        finally:
            os.kill(pid, signal.SIGCONT)
    line = str(info.value)
    assert took < 8  # 1 s deadline + at most 2 s waiting for stacks, on a loaded box
    assert line.startswith("stage f.pid overran its 1 s deadline on rank 0; rank 0 did not answer")
    assert line.endswith("raise hardware.stage_timeout_s if it is only slow")
    assert "rank 0: no answer" in (info.value.stacks or "")


class SlowStart:
    def __init__(self) -> None:
        time.sleep(30)


def test_slow_start_hits_the_start_deadline() -> None:
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        WorkerGroup(ResourcePool(1, 1, "cpu"), {"slow": SlowStart}, call_timeout_s=60, start_timeout_s=1.0)
    assert time.monotonic() - start < 25  # not the 30 s of the constructor
    # placing the actor may itself take over 1 s on a loaded box: either phase counts
    assert re.match(
        r"the workers' start-up \((node_info|setup)\) overran its 1 s deadline on rank 0", str(info.value)
    )
    assert str(info.value).endswith("raise hardware.worker_start_timeout_s if it is only slow")


_WATCHED = """
import sys, time
from rlkit.controller.worker import watch_driver
import psutil
driver = psutil.Process(int(sys.argv[1]))
import socket
watch_driver({"host": socket.gethostname(), "pid": driver.pid, "create_time": driver.create_time()}, 0.2)
print("watching", flush=True)
time.sleep(60)
"""


def test_worker_exits_soon_after_its_driver_dies() -> None:
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker = subprocess.Popen(
        [sys.executable, "-c", _WATCHED, str(driver.pid)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "watching"
        driver.kill()
        driver.wait()
        start = time.monotonic()
        assert worker.wait(timeout=10) == 1
        assert time.monotonic() - start < 3
    finally:
        for proc in (driver, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
