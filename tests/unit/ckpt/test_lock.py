"""RUN/.lock: a second run on a folder is refused while the first lives, and free once it is killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlkit.ckpt.lock import RunLock
from rlkit.errors import UserError

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rlkit.ckpt.lock import RunLock
    lock = RunLock.acquire(Path(sys.argv[1]), command="holder")
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_live_run_holds_the_folder_and_a_killed_one_does_not(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by another rlkit run: pid {holder.pid} on host") as err:
            RunLock.acquire(tmp_path)
        assert socket.gethostname() in str(err.value) and "trainer.out_dir" in str(err.value.hint)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: the kernel drops the flock
        holder.wait()
    assert (tmp_path / ".lock").is_file()  # a stale file is no lock
    with RunLock.acquire(tmp_path) as lock:
        assert lock.held and str(os.getpid()) in (tmp_path / ".lock").read_text()
    assert (tmp_path / ".lock").read_text() == ""  # released: nobody named


def test_release_lets_the_next_run_in(tmp_path: Path) -> None:
    first = RunLock.acquire(tmp_path)
    with pytest.raises(UserError, match=f"pid {os.getpid()}"):
        RunLock.acquire(tmp_path)  # a second open file of the same process is refused too
    first.release()
    first.release()  # idempotent
    RunLock.acquire(tmp_path).release()
