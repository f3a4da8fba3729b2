"""The sandbox's child process: limit itself, cut the network, then run the model's code.

Run by path with ``LIMITS_JSON`` as the last argument, the code on stdin and the working
directory set to a fresh temp dir (:mod:`rlkit.agents.tools.sandbox` does all that); it imports
only the standard library and :mod:`rlkit.limits`.
The order matters: the network namespace and the parent-death signal come first (they use
``ctypes``), then the rlimits, then the audit hook, and only then is the model's code compiled.
The first line on stderr is ``#rlkit-sandbox net=<namespace|audit>`` so the parent can report
which network guard applied.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

from rlkit import limits

MARKER = "#rlkit-sandbox"
# audit events refused once the model's code runs: the network, new processes (which the audit
# hook could not follow into another interpreter) and signals to other processes (the trainer
# runs under the same user)
_REFUSED_PREFIXES = ("socket.",)
_PROCESS_EVENTS = frozenset(
    {
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "pty.spawn",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
    }
)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event.startswith(_REFUSED_PREFIXES):
        raise PermissionError(f"network access is disabled in this sandbox ({event})")
    if event in _PROCESS_EVENTS:
        raise PermissionError(f"starting or signalling processes is disabled in this sandbox ({event})")


def main() -> None:
    """Apply the limits given as JSON in the last argument and run the code read from stdin."""
    config = json.loads(sys.argv[-1])
    code = sys.stdin.read()
    sys.stdin.close()
    limits.die_with_parent()
    isolated = config.get("network_namespace", True) and limits.isolate_network()
    limits.limit_files(config.get("max_file_mb"))
    limits.limit_memory(config.get("memory_limit_mb"))
    limits.arm_cpu_limit(float(config["cpu_limit_s"]), kill_after_s=1)
    sys.stderr.write(f"{MARKER} net={'namespace' if isolated else 'audit'}\n")
    sys.stderr.flush()
    sys.addaudithook(_audit)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(code, "<code>", "exec"), namespace)  # noqa: S102 - the sandboxed child's whole job
    except SystemExit:
        raise
    except BaseException as exc:  # the model's code: show its traceback without this file's frame
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
        sys.stderr.flush()
        sys.exit(1)


if __name__ == "__main__":
    main()
