"""The scoring process's side of :class:`~rlkit.rewards.pool.ScoringPool`.

The process caps its memory and CPU time, imports the scoring function, then serves chunks of
calls. Everything it sends back is bytes of JSON built from plain data (:mod:`rlkit.rewards.plain`):
``{"kind": "started"}``, ``{"kind": "ready"}``, ``{"kind": "fatal", "message": str}`` and
``{"kind": "results", "seq": n, "results": [[status, value], ...]}`` (``n`` numbers the chunk),
where ``value`` is the plain result (``status == "ok"``) or ``{"reason": kind, "message": str}``
(``status == "error"``). On ``SIGUSR1`` the process writes its Python stack (``faulthandler``) to
a second pipe, which is how the trainer learns where an import or a sample hangs.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from rlkit.limits import arm_cpu_limit as _arm_cpu_limit
from rlkit.limits import limit_memory as _limit_memory
from rlkit.rewards import plain
from rlkit.rewards.custom import CustomRewardFn

OK, ERROR = "ok", "error"
# faulthandler keeps the file descriptor, not the object: keep the pipe end alive here.
_STACK_PIPE: list[Connection] = []


def _arm_stack_dumps(stack_pipe: Connection) -> None:
    _STACK_PIPE.append(stack_pipe)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, file=stack_pipe.fileno(), all_threads=False)


def _exit_with_parent(lifeline: Connection) -> None:
    """End this process as soon as the trainer is gone, even while user code hangs.

    The trainer holds the other end of ``lifeline`` and never writes to it, so a read returns
    only when that end closes: the trainer exited or was killed. A process hung in user code never
    reads the EOF of its main pipe; this daemon thread does.
    """

    def watch() -> None:
        try:
            lifeline.recv_bytes()
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="rlkit-reward-lifeline", daemon=True).start()


def _reply(conn: Connection, text: str) -> None:
    conn.send_bytes(text.encode("utf-8", errors="replace"))


def _message(kind: str, **fields: str) -> str:
    return plain.encode({"kind": kind, **fields})


def call_plain(fn: Callable[..., Any], kwargs: dict[str, Any]) -> str:
    """One call's ``[status, value]`` as JSON text; user code raising or returning junk is an error."""
    try:
        value = fn(**kwargs)
    except BaseException as exc:  # user code: SystemExit and MemoryError are its failures too
        return plain.encode([ERROR, {"reason": "raised", "message": plain.describe(exc)}])
    try:
        return plain.encode([OK, plain.to_plain(value)])
    except plain.TooLargeError as exc:
        return plain.encode([ERROR, {"reason": "too_large", "message": f"returned {exc}"}])
    except plain.NotPlainError as exc:
        return plain.encode([ERROR, {"reason": "not_plain", "message": f"returned {exc}"}])
    except BaseException as exc:  # a user object's __float__ / tolist / __iter__ raised
        message = f"returned a {type(value).__qualname__} object ({plain.describe(exc)})"
        return plain.encode([ERROR, {"reason": "not_plain", "message": message}])


def worker_main(
    fn: Callable[..., Any],
    conn: Connection,
    stack_pipe: Connection,
    lifeline: Connection,
    progress: Any,
    memory_limit_mb: int | None,
    cpu_limit_s: float | None,
) -> None:
    """Serve chunks ``(seq, timeout_s, [kwargs, ...])`` until ``None`` or the parent goes away.

    What the parent sends (``fn`` and the chunks) is made by the trainer, so it is unpickled here
    as usual; nothing goes the other way but JSON bytes.
    """
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(lifeline)
    _limit_memory(memory_limit_mb)
    _arm_stack_dumps(stack_pipe)
    _reply(conn, _message("started"))
    try:
        target = getattr(fn, "func", fn)
        if isinstance(target, CustomRewardFn):
            target.resolve()
    except BaseException as exc:
        _reply(conn, _message("fatal", message=plain.describe(exc)))
        return
    _reply(conn, _message("ready"))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        seq, timeout_s, calls = message
        results: list[str] = []
        for position, kwargs in enumerate(calls):
            progress[1] = time.monotonic()
            progress[0] = position
            _arm_cpu_limit(cpu_limit_s if cpu_limit_s is not None else timeout_s + 1.0)
            results.append(call_plain(fn, kwargs))
        _reply(conn, f'{{"kind":"results","seq":{int(seq)},"results":[' + ",".join(results) + "]}")
