"""Run a command that never outlives its owner: ``python .../rlkit/rollout/guard.py -- CMD ...``.

:func:`guarded_popen` starts this launcher in a new session (so the launcher, the command and
everything the command starts form one process group) with a pipe on its stdin whose write end
only the owner holds. The launcher starts the command and watches both:

- the pipe reaches end-of-file: the owner is gone, however it ended (the kernel closes a dead
  process's descriptors, ``kill -9`` included), so the launcher stops the whole group;
- the command exits: the launcher stops what it left in the group and exits with its code;
- the launcher is killed (SIGKILL, which it cannot catch): the command gets SIGKILL too (Linux).

Stopping is SIGTERM to the group, then SIGKILL to what is left after :data:`GRACE_S`. The
launcher ignores SIGTERM itself, so an owner that stops the group (``os.killpg(pid, SIGTERM)``)
sees the launcher exit once the command has. The launcher runs as a script (not ``-m``, which
would import rlkit's packages): it imports nothing of rlkit and no torch, and starts at once.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from typing import IO, Any

# Seconds the command gets to exit after SIGTERM before what is left of the group is killed.
GRACE_S = 5.0


def guarded_popen(
    cmd: list[str], *, stdout: IO[bytes] | int | None, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` under the launcher, in its own session; it ends when this process ends.

    Args:
        cmd: The command line.
        stdout: Where the command's stdout and stderr go.
        env: Its environment.

    Returns:
        The launcher's process (its pid is the process group's id). Keep the object: its
        ``stdin`` is the pipe whose closing stops the command.
    """
    launcher = [sys.executable, os.path.abspath(__file__), "--", *cmd]
    return subprocess.Popen(
        launcher,
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _others(pgid: int) -> list[int]:
    """Pids of this process group other than this launcher (Linux: from /proc; elsewhere none known)."""
    me, found = os.getpid(), []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            if pid != me and os.getpgid(pid) == pgid:
                found.append(pid)
        except OSError:
            continue
    return found


def _stop_group(child: subprocess.Popen[Any]) -> None:
    """SIGTERM the group (the launcher ignores it), SIGKILL whatever is left after :data:`GRACE_S`."""
    pgid = os.getpgid(0)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and (child.poll() is None or _others(pgid)):
        time.sleep(0.05)
    for pid in _others(pgid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        child.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pass


def main(argv: list[str]) -> int:
    """Run ``argv`` (after ``--``) until it exits or stdin closes; returns its exit code."""
    cmd = argv[1:] if argv and argv[0] == "--" else argv
    if not cmd:
        print("usage: python guard.py -- CMD ...", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    launcher = os.getpid()
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=lambda: _default_sigterm(launcher))
    owner = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([owner], [], [], 0.2)
        if ready and not os.read(owner, 4096):  # end of file: the owner is gone
            _stop_group(child)
            return 1
        code = child.poll()
        if code is not None:
            _stop_group(child)
            return code if code >= 0 else 128 - code


def _default_sigterm(launcher: int) -> None:
    """In the command's process: SIGTERM back to its default (the launcher ignores it), and on Linux
    SIGKILL when the launcher dies (``PR_SET_PDEATHSIG``).

    The second covers a launcher that is itself SIGKILLed before it can stop the group: Ray kills
    the processes a dying worker left behind, and an rlkit-started vLLM server once outlived its run
    that way, reparented to init.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != launcher:  # the launcher died before the signal was armed
            os._exit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
