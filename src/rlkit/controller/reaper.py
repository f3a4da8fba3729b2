"""A detached process that kills a driver's local Ray processes once the driver is gone.

Started by :func:`rlkit.controller.pool.start_ray` right after it starts a local Ray, as
``python -I reaper.py DRIVER_PID DRIVER_CREATE_TIME`` (a plain script: it imports only psutil, so
it starts in a fraction of a second and costs no memory worth naming). While the driver lives it
records, every :data:`POLL_S`, the Ray processes below the driver (GCS, raylet, agents, workers),
by pid and start time. When the driver is gone (exited, or ``kill -9``), it kills the recorded
processes that still run (SIGTERM, then SIGKILL after :data:`GRACE_S`) and exits. After a clean
exit nothing is left to kill. It never touches a process it did not see below the driver, nor one
whose pid was reused (the start time differs), nor anything that is not Ray's.
"""

from __future__ import annotations

import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 1.0


def is_ray_process(proc: psutil.Process) -> bool:
    """Whether ``proc`` is one of Ray's (its name or command line names Ray or one of its servers)."""
    try:
        name = proc.name()
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return (
        name.startswith(("ray::", "raylet", "gcs_server"))
        or "/ray/" in cmdline
        or cmdline.startswith("ray::")
    )


def alive(proc: psutil.Process, create_time: float) -> bool:
    """Whether ``proc`` still runs (not a zombie) and is the process that started at ``create_time``."""
    try:
        # is_running() compares the start time now with the one psutil cached: a reused pid fails it
        same = proc.is_running() and proc.create_time() == create_time
        return bool(same and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def watch(driver_pid: int, driver_create_time: float) -> list[int]:
    """Wait for the driver's death, then kill its Ray processes; returns the pids killed."""
    driver = psutil.Process(driver_pid)
    seen: dict[int, psutil.Process] = {}
    me = psutil.Process().pid
    while alive(driver, driver_create_time):
        try:
            for child in driver.children(recursive=True):
                if child.pid != me and child.pid not in seen and is_ray_process(child):
                    child.create_time()  # cached by psutil: later checks compare against it
                    seen[child.pid] = child
        except psutil.Error:
            pass
        time.sleep(POLL_S)
    left = [p for p in seen.values() if p.is_running()]  # is_running compares the start time
    for proc in left:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(left, timeout=GRACE_S)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return [p.pid for p in left]


def main(argv: list[str]) -> int:
    """``reaper.py DRIVER_PID DRIVER_CREATE_TIME``."""
    try:
        watch(int(argv[0]), float(argv[1]))
    except psutil.NoSuchProcess:
        pass  # the driver was gone before we looked: it left nothing we saw
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
