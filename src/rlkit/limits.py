"""Operating-system limits for processes that run untrusted or user code (stdlib only).

The reward scoring processes (:mod:`rlkit.rewards.worker`) and the tool sandbox's child process
(:mod:`rlkit.agents.tools.sandbox_child`) set their own limits with these helpers, from inside the
limited process: nothing here runs between ``fork`` and ``exec`` of a multi-threaded parent. Each
helper is a no-op where the platform lacks the mechanism (Windows, macOS), and says so by its
return value where a caller needs to know.
"""

from __future__ import annotations

import math
import os

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1


def limit_memory(memory_limit_mb: int | None) -> None:
    """Cap the address space at what the process maps now plus ``memory_limit_mb``."""
    if memory_limit_mb is None:
        return
    try:
        import resource
    except ImportError:  # Windows: no rlimits
        return
    try:
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        mapped = 0
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + memory_limit_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):  # macOS rejects or ignores RLIMIT_AS
        pass


def arm_cpu_limit(seconds: float, kill_after_s: int | None = None) -> None:
    """Let the process use ``seconds`` more CPU; past that the kernel ends it (SIGXCPU).

    RLIMIT_CPU counts the process's whole life, so a long-lived worker moves the soft limit
    forward before each piece of work. With ``kill_after_s`` the hard limit follows that many
    seconds later (SIGKILL: for code that ignores SIGXCPU); a hard limit cannot be raised again.
    """
    try:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        if kill_after_s is not None:
            hard = soft + kill_after_s if hard == resource.RLIM_INFINITY else min(hard, soft + kill_after_s)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ImportError, ValueError, OSError):
        pass


def limit_files(max_file_mb: int | None, allow_core_dumps: bool = False) -> None:
    """Cap the size of any file the process writes (SIGXFSZ past it) and, by default, core dumps."""
    try:
        import resource

        if max_file_mb is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_mb * 2**20, max_file_mb * 2**20))
        if not allow_core_dumps:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return False
        if os.getppid() != parent:  # the parent died before the call: nobody is left to kill us
            os._exit(1)
        return True
    except (OSError, AttributeError, ImportError):
        return False


def isolate_network() -> bool:
    """Move the process into a new, empty network namespace (no interfaces: nothing to reach).

    Uses an unprivileged user namespace (``unshare(CLONE_NEWUSER | CLONE_NEWNET)``), which needs
    no root where the kernel allows user namespaces. Returns whether it worked; callers keep
    another guard for kernels that refuse it.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0)
    except (OSError, AttributeError):
        return False
