"""Reading what a scoring process sends back: result replies (JSON) and stack dumps (text).

Used by :class:`~rlkit.rewards.pool.ScoringPool` on the trainer's side. Nothing here unpickles:
replies are checked plain data (:mod:`rlkit.rewards.plain`), stacks are text matched by a regex.
"""

from __future__ import annotations

import os
import re
import signal
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from rlkit.rewards import plain
from rlkit.rewards.worker import ERROR, OK

_STACK_WAIT_S = 1.0
_CHILD_REASONS = ("raised", "not_plain", "too_large")
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


class StaleReplyError(Exception):
    """A reply to an earlier chunk than the one the worker is on."""


def check_results(message: dict[str, Any], size: int, seq: int) -> list[tuple[str, Any]]:
    """``[(status, value or (reason, message))]`` from a worker's reply, checked; raises NotPlainError.

    ``seq`` numbers the chunks sent to the worker: a reply for another chunk is never given to
    this chunk's samples. An older one (the real reply to a chunk that code in the worker answered
    first with a forged one) is dropped; any other is malformed.
    """
    results = message.get("results")
    got = message.get("seq")
    if message["kind"] == "results" and isinstance(got, int) and not isinstance(got, bool) and got < seq:
        raise StaleReplyError(got)
    if message["kind"] != "results" or got != seq:
        raise plain.NotPlainError(f"a reply that is not the results of chunk {seq}")
    if not isinstance(results, list) or len(results) != size:
        raise plain.NotPlainError(f"a reply that is not {size} results")
    checked: list[tuple[str, Any]] = []
    for entry in results:
        if not isinstance(entry, list) or len(entry) != 2:
            raise plain.NotPlainError("a result that is not [status, value]")
        status, value = entry
        if status == OK:
            checked.append((OK, plain.check_plain(value)))
        elif status == ERROR and isinstance(value, dict) and value.get("reason") in _CHILD_REASONS:
            checked.append((ERROR, (value["reason"], plain.clip_message(value.get("message")))))
        else:
            raise plain.NotPlainError(f"a result with status {str(status)[:20]!r}")
    return checked


def read_stack(process: Any, stacks: Connection) -> str:
    """Ask a (hung) worker for its Python stack (``faulthandler`` on SIGUSR1); '' if none comes."""
    if not hasattr(signal, "SIGUSR1") or not process.is_alive():
        return ""
    fd = stacks.fileno()
    for _ in range(16):  # drop an older dump (bounded: a worker could write without end)
        if not wait([stacks], timeout=0):
            break
        if not os.read(fd, 65536):
            return ""
    try:
        os.kill(process.pid, signal.SIGUSR1)
    except OSError:
        return ""
    chunks: list[bytes] = []
    end = time.monotonic() + _STACK_WAIT_S
    while time.monotonic() < end and sum(map(len, chunks)) < 65536:
        # after the first bytes, a short silence means the dump is complete
        if not wait([stacks], timeout=0.1 if chunks else max(0.0, end - time.monotonic())):
            break
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode("utf-8", errors="replace")


def where(stack: str, prefer: str | None) -> str:
    """``file.py:3 `the line``` of the innermost frame (in ``prefer``, the user's file, if it is there)."""
    frames = [(m["file"], int(m["line"])) for m in _FRAME.finditer(stack)]  # innermost first
    if not frames:
        return ""
    path, line = next(((f, n) for f, n in frames if f == prefer), frames[0])
    text = ""
    if path == prefer:  # only the file the trainer already read: a path from a worker could be a FIFO
        try:
            with open(path, encoding="utf-8", errors="replace") as source:
                text = next((t for i, t in enumerate(source, 1) if i == line), "").strip()
        except OSError:
            pass
    return f"{os.path.basename(path)[:80]}:{line}" + (f" `{text[:80]}`" if text else "")
