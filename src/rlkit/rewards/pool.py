"""Scoring in worker processes: limits, deadlines, plain data back, errors counted, never a crashed step.

:class:`ScoringPool` keeps ``num_workers`` processes alive across calls (``forkserver`` where the
OS has it, else ``spawn``), each bound to one scoring function (its side:
:mod:`rlkit.rewards.worker`). A call's samples go out in chunks (one message per chunk each way,
not per sample), to all workers at once, so hung samples cost one timeout per worker in parallel.

What crosses back is bytes of JSON only, built from plain data inside the worker
(:mod:`rlkit.rewards.plain`); this side ``json.loads`` and checks them
(:mod:`rlkit.rewards.replies`) and never unpickles
anything a worker sends. The only other things a worker writes are two numbers in shared memory
(which sample of its chunk it is on, since when), clamped here to what this side's own clock
allows, and its stack on request, read as text. What goes *to* a worker (the function reference,
the trainer's own keyword sets) is trainer-made data and travels pickled as usual.

Deadlines:

- per sample (``timeout_s``): a worker writes the position and start time of the sample it is on
  into a small shared array; when a sample overruns, this side asks the worker for its stack (to
  say where it hangs), kills it (SIGTERM, SIGKILL after a grace period), scores that sample as a
  timeout, starts a replacement and sends the rest of the chunk again;
- per call (``step_timeout_s``): samples not scored by then are timeouts (``step_timeout``), and
  the busy workers are killed and replaced;
- import (``import_timeout_s``): a worker that does not finish importing the function in time is
  a :class:`~rlkit.errors.UserError` naming the line it hangs at.

A sample that raises, returns something that is not plain data, or whose worker dies (a
segfault, ``os._exit``, the CPU limit) is an error of its kind (:data:`rlkit.rewards.outcomes.KINDS`).
Results come back in input order. Each worker caps its address space (``RLIMIT_AS``:
``memory_limit_mb`` on top of what it maps at start) and its CPU time per sample
(``RLIMIT_CPU``), where the OS allows. ``num_workers=0`` scores in the calling process instead:
fastest, but without deadlines or limits, so it is meant for the trusted built-in scorers only; a
:class:`~rlkit.rewards.custom.CustomRewardFn` refuses it.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from rlkit.errors import UserError
from rlkit.rewards import plain
from rlkit.rewards.custom import CustomRewardFn
from rlkit.rewards.outcomes import Failure
from rlkit.rewards.replies import StaleReplyError, check_results, read_stack, where
from rlkit.rewards.worker import ERROR, OK, worker_main

__all__ = ["ERROR", "OK", "TIMEOUT", "PoolResult", "ScoringPool"]

_log = logging.getLogger(__name__)

TIMEOUT = "timeout"
_MAX_MESSAGES = 5
_MAX_CHUNK = 256
_CHUNKS_PER_WORKER = 4
_START_TIMEOUT_S = 120.0  # the process itself (interpreter, rlkit); the user's file has its own
_KILL_GRACE_S = 0.3


@dataclass
class PoolResult:
    """The outcome of :meth:`ScoringPool.map`, aligned with its input.

    Attributes:
        values: Each call's plain return value; None where the call failed.
        status: ``ok``, ``error`` or ``timeout`` per call.
        kinds: The failure kind per call (a key of :data:`rlkit.rewards.outcomes.KINDS`), None if ok.
        details: What happened, per failed call (``raised ValueError: ... (file.py:3)``).
        restarts: Workers replaced during the call.
        messages: Up to five distinct failure descriptions, for the log.
    """

    values: list[Any]
    status: list[str]
    kinds: list[str | None] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    restarts: int = 0
    messages: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, size: int, status: str = "") -> PoolResult:
        return cls([None] * size, [status] * size, [None] * size, [""] * size)

    @property
    def errors(self) -> int:
        return self.status.count(ERROR)

    @property
    def timeouts(self) -> int:
        return self.status.count(TIMEOUT)

    @property
    def failures(self) -> list[Failure]:
        """The failed calls, in input order."""
        return [Failure(i, kind, self.details[i]) for i, kind in enumerate(self.kinds) if kind is not None]

    def fail(self, index: int, kind: str, detail: str) -> None:
        """Mark call ``index`` failed (a timeout for the timeout kinds, else an error)."""
        self.values[index] = None
        self.status[index] = TIMEOUT if kind in ("timeout", "step_timeout") else ERROR
        self.kinds[index], self.details[index] = kind, detail
        if len(self.messages) < _MAX_MESSAGES and detail not in self.messages:
            self.messages.append(detail)


def _is_custom(fn: Callable[..., Any]) -> bool:
    return isinstance(getattr(fn, "func", fn), CustomRewardFn)


# ----------------------------------------------------------------------------- processes


@dataclass
class _Worker:
    process: Any
    conn: Connection
    stacks: Connection
    lifeline: Connection  # never written: its closing (this process ending) ends the worker
    progress: Any
    chunk: list[int] | None = None
    sent_at: float = 0.0
    seq: int = 0
    ready: bool = False


def _stop(processes: Sequence[Any], grace: float = _KILL_GRACE_S) -> None:
    """SIGTERM the live ones, SIGKILL whatever still runs after ``grace`` seconds, reap all."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    end = time.monotonic() + grace
    for process in processes:
        process.join(timeout=max(0.0, end - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()


def _close(worker: _Worker) -> None:
    worker.conn.close()
    worker.stacks.close()
    worker.lifeline.close()


def _shutdown(workers: list[_Worker]) -> None:
    for worker in workers:
        try:
            worker.conn.send(None)
        except (OSError, ValueError):
            pass
    end = time.monotonic() + 1.0
    for worker in workers:
        worker.process.join(timeout=max(0.0, end - time.monotonic()))
    _stop([w.process for w in workers], grace=0.0)
    for worker in workers:
        _close(worker)
    workers.clear()


def _default_start_method() -> str:
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


class ScoringPool:
    """Worker processes that call one scoring function on many keyword sets.

    Args:
        fn: The function; picklable (a module-level function, a
            :class:`~rlkit.rewards.custom.CustomRewardFn`, or a ``functools.partial`` of one).
        num_workers: Worker processes; 0 calls ``fn`` in this process (trusted built-in scorers
            only: no deadlines, no limits, but exceptions are still caught and counted).
        timeout_s: Wall-clock seconds one call may take before its worker is killed.
        memory_limit_mb: Address space a worker may add to what it maps at start (None: no cap).
        cpu_limit_s: CPU seconds one call may use (None: ``timeout_s + 1``).
        chunk_size: Calls per message (None: about four chunks per worker, at most 256).
        start_method: ``forkserver`` or ``spawn`` (None: forkserver where available).
        step_timeout_s: Wall-clock seconds one :meth:`map` may take (None: no cap).
        import_timeout_s: Seconds a new worker may take to import the function.
        notify: Called with one line the first time a call of a :meth:`map` times out (so that a
            slow step says why at once), e.g. a console's ``print``.

    Example:
        >>> from rlkit.rewards.scorers import default_compute_score
        >>> with ScoringPool(default_compute_score, num_workers=0) as pool:
        ...     pool.map([{"data_source": "arith", "solution_str": "7", "ground_truth": "7"}]).status
        ['ok']
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        num_workers: int = 2,
        timeout_s: float = 10.0,
        memory_limit_mb: int | None = 2048,
        cpu_limit_s: float | None = None,
        chunk_size: int | None = None,
        start_method: str | None = None,
        step_timeout_s: float | None = None,
        import_timeout_s: float = 60.0,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        if (
            num_workers < 0
            or timeout_s <= 0
            or import_timeout_s <= 0
            or (step_timeout_s is not None and step_timeout_s <= 0)
            or (chunk_size is not None and chunk_size < 1)
        ):
            raise ValueError(
                f"bad pool settings: {num_workers=}, {timeout_s=}, {step_timeout_s=}, "
                f"{import_timeout_s=}, {chunk_size=}"
            )
        if num_workers == 0 and _is_custom(fn):
            raise ValueError("custom reward code runs only in worker processes: use num_workers >= 1")
        self.fn = fn
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.cpu_limit_s = cpu_limit_s
        self.chunk_size = chunk_size
        self.step_timeout_s = step_timeout_s
        self.import_timeout_s = import_timeout_s
        self.notify = notify
        target = getattr(fn, "func", fn)
        self._user_file = target.path if isinstance(target, CustomRewardFn) else None
        self._ctx: Any = mp.get_context(start_method or _default_start_method())
        if self._ctx.get_start_method() == "forkserver":
            # Workers fork from the server with this module already imported (no-op once it runs).
            self._ctx.set_forkserver_preload(["__main__", __name__])
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        self._workers.extend(self._start_worker() for _ in range(num_workers))

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        stacks, child_stacks = self._ctx.Pipe(duplex=False)
        child_lifeline, lifeline = self._ctx.Pipe(duplex=False)
        progress = self._ctx.RawArray("d", 2)
        process = self._ctx.Process(
            target=worker_main,
            args=(
                self.fn,
                child_conn,
                child_stacks,
                child_lifeline,
                progress,
                self.memory_limit_mb,
                self.cpu_limit_s,
            ),
            name="rlkit-reward-worker",
            daemon=True,
        )
        try:
            process.start()
        except Exception as exc:
            raise ValueError(f"cannot start a scoring worker for {self.fn!r}: {exc}") from exc
        finally:
            # only the child holds its ends now, so its exit reads as EOF here
            child_conn.close()
            child_stacks.close()
            child_lifeline.close()
        return _Worker(process, parent_conn, stacks, lifeline, progress)

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._finalizer()

    def wait_ready(self) -> None:
        """Block until every worker has imported the function (they import in parallel).

        Raises:
            UserError: The function's file raises, exits or hangs at import (naming the line).
        """
        for worker in list(self._workers):
            self._wait_ready(worker)

    def map(self, calls: Sequence[Mapping[str, Any]], *, timeout_s: float | None = None) -> PoolResult:
        """Call ``fn(**kwargs)`` for each element of ``calls``.

        Args:
            calls: Keyword sets, one per call.
            timeout_s: Per-call timeout for this map (None: the pool's).

        Returns:
            Plain values, statuses and failure kinds in input order.

        Raises:
            UserError: A worker could not load a custom scoring function (the file raises, exits
                or hangs at import).
        """
        if not self._finalizer.alive and self.num_workers:
            raise RuntimeError("ScoringPool.map after close()")
        if self.num_workers == 0:
            return self._map_inline(calls)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        result = PoolResult.empty(len(calls))
        size = self.chunk_size or max(
            1, min(_MAX_CHUNK, math.ceil(len(calls) / (self.num_workers * _CHUNKS_PER_WORKER)))
        )
        queue = deque(list(range(i, min(i + size, len(calls)))) for i in range(0, len(calls), size))
        step_end = time.monotonic() + (self.step_timeout_s or math.inf)
        remaining = len(calls)
        while remaining:
            if time.monotonic() >= step_end:
                remaining -= self._abandon(queue, result)
                break
            for slot, worker in enumerate(self._workers):
                if worker.chunk is None and queue:
                    if not worker.process.is_alive():
                        worker = self._replace(slot, result)
                    self._wait_ready(worker)
                    self._dispatch(worker, queue.popleft(), calls, timeout)
            remaining -= self._collect(queue, timeout, step_end, result)
        if result.errors or result.timeouts:  # the managers print the step's one line
            _log.debug(
                "reward scoring: %d errors, %d timeouts of %d (%s)",
                result.errors,
                result.timeouts,
                len(calls),
                "; ".join(result.messages),
            )
        return result

    def _map_inline(self, calls: Sequence[Mapping[str, Any]]) -> PoolResult:
        result = PoolResult.empty(len(calls), OK)
        for i, kwargs in enumerate(calls):
            try:
                value = self.fn(**kwargs)
            except Exception as exc:
                result.fail(i, "raised", f"raised {plain.describe(exc)}")
                continue
            try:  # the same plain values as from a worker, so that managers see one contract
                result.values[i] = plain.to_plain(value)
            except plain.NotPlainError as exc:
                result.fail(i, "not_plain", f"returned {exc}")
        return result

    def _dispatch(
        self, worker: _Worker, chunk: list[int], calls: Sequence[Mapping[str, Any]], timeout: float
    ) -> None:
        # The worker is idle (blocked in recv), so the parent may reset its progress without a race.
        worker.sent_at = time.monotonic()
        worker.progress[0] = 0
        worker.progress[1] = worker.sent_at
        worker.chunk = chunk
        worker.seq += 1
        try:  # pickled: the trainer's own keyword sets going to the worker, never the other way
            worker.conn.send((worker.seq, timeout, [calls[i] for i in chunk]))
        except (OSError, ValueError):
            pass  # a dead worker: its EOF is picked up by _collect

    def _deadline(self, worker: _Worker, timeout: float) -> float:
        """When the worker's current sample times out.

        The start time comes from the worker, so it is clamped to this side's own clock: a worker
        cannot claim more than ``timeout`` per sample of its chunk since the chunk was sent.
        """
        assert worker.chunk is not None
        start = worker.progress[1]
        start = (
            worker.sent_at if not math.isfinite(start) else min(max(start, worker.sent_at), time.monotonic())
        )
        return min(start + timeout, worker.sent_at + timeout * len(worker.chunk))

    def _position(self, worker: _Worker) -> int:
        assert worker.chunk is not None
        position = worker.progress[0]
        return int(min(max(position, 0), len(worker.chunk) - 1)) if math.isfinite(position) else 0

    def _collect(self, queue: deque[list[int]], timeout: float, step_end: float, result: PoolResult) -> int:
        """Wait for results or the first deadline; returns how many calls got a final status."""
        busy = [w for w in self._workers if w.chunk is not None]
        deadline = min(min(self._deadline(w, timeout) for w in busy), step_end)
        ready = wait([w.conn for w in busy], timeout=max(0.0, deadline - time.monotonic()))
        finished = 0
        for slot, worker in enumerate(self._workers):
            if worker.chunk is None:
                continue
            if worker.conn in ready:
                finished += self._receive(slot, queue, result)
            elif time.monotonic() > self._deadline(worker, timeout):
                finished += self._time_out(slot, timeout, queue, result)
        return finished

    def _receive(self, slot: int, queue: deque[list[int]], result: PoolResult) -> int:
        """Read one reply of the worker in ``slot`` (JSON bytes only) and record it."""
        worker = self._workers[slot]
        chunk = worker.chunk
        assert chunk is not None
        try:
            data = worker.conn.recv_bytes(len(chunk) * (plain.MAX_RESULT_BYTES + 512) + plain.ENVELOPE_BYTES)
            entries = check_results(plain.parse_message(data), len(chunk), worker.seq)
        except EOFError:
            return self._fail(slot, "crashed", "crashed its scoring process", queue, result)
        except StaleReplyError:
            return 0  # keep waiting for this chunk's reply, within its deadline
        except (OSError, plain.NotPlainError) as exc:  # too long, or not the JSON a worker sends
            for index in chunk:
                result.fail(index, "malformed", f"came back malformed from its scoring process ({exc})")
            worker.chunk = None
            self._replace(slot, result)
            return len(chunk)
        for index, (status, value) in zip(chunk, entries, strict=True):
            if status == OK:
                result.status[index], result.values[index] = OK, value
            else:
                reason, message = value
                result.fail(index, reason, message if reason != "raised" else f"raised {message}")
        worker.chunk = None
        return len(chunk)

    def _time_out(self, slot: int, timeout: float, queue: deque[list[int]], result: PoolResult) -> int:
        """The worker's sample ran past ``timeout``: find where it hangs, then fail it."""
        worker = self._workers[slot]
        location = where(read_stack(worker.process, worker.stacks), self._user_file)
        detail = f"ran past {timeout:g} s" + (f" (at {location})" if location else "")
        finished = self._fail(slot, "timeout", detail, queue, result)
        if self.notify is not None and result.timeouts == 1:
            budget = (
                f"; this step's scoring stops after {self.step_timeout_s:g} s" if self.step_timeout_s else ""
            )
            self.notify(
                f"reward: a sample {detail}; its scoring process was killed and replaced, scoring goes on{budget}"
            )
        return finished

    def _fail(self, slot: int, kind: str, detail: str, queue: deque[list[int]], result: PoolResult) -> int:
        """Stop the worker in ``slot``, give its current call ``kind`` and requeue the rest."""
        worker = self._workers[slot]
        assert worker.chunk is not None
        _stop([worker.process])
        position = self._position(worker)
        exitcode = worker.process.exitcode
        if kind == "crashed":
            detail += (
                f" (exit code {exitcode})"
                if exitcode is not None and exitcode >= 0
                else f" (signal {-exitcode})"
            )
        result.fail(worker.chunk[position], kind, detail)
        rest = worker.chunk[:position] + worker.chunk[position + 1 :]
        if rest:
            queue.appendleft(rest)
        worker.chunk = None
        self._replace(slot, result)
        return 1

    def _abandon(self, queue: deque[list[int]], result: PoolResult) -> int:
        """The call's budget is spent: what is not scored yet is a timeout; busy workers are replaced."""
        busy = [slot for slot, w in enumerate(self._workers) if w.chunk is not None]
        _stop([self._workers[slot].process for slot in busy])
        detail = f"was not scored within {self.step_timeout_s:g} s (the step's scoring budget)"
        pending = [i for slot in busy for i in self._workers[slot].chunk or []]
        pending += [i for chunk in queue for i in chunk]
        for index in pending:
            result.fail(index, "step_timeout", detail)
        queue.clear()
        for slot in busy:
            self._workers[slot].chunk = None
            self._replace(slot, result)
        return len(pending)

    def _replace(self, slot: int, result: PoolResult) -> _Worker:
        old = self._workers[slot]
        _stop([old.process])
        _close(old)
        self._workers[slot] = self._start_worker()
        result.restarts += 1
        return self._workers[slot]

    def _next_message(self, worker: _Worker, timeout: float) -> dict[str, Any] | None:
        """The worker's next start-up message: None if none came in ``timeout`` s, ``exited`` if it exited."""
        if not worker.conn.poll(timeout):
            return None
        try:
            return plain.parse_message(worker.conn.recv_bytes(plain.ENVELOPE_BYTES + plain.MAX_MESSAGE_CHARS))
        except (EOFError, OSError):
            worker.process.join(timeout=5.0)  # for its exit code
            return {"kind": "exited"}
        except plain.NotPlainError as exc:
            return {"kind": "fatal", "message": f"a malformed start-up message ({exc})"}

    def _wait_ready(self, worker: _Worker) -> None:
        """Block until a new worker has loaded the function; a worker that cannot is fatal.

        Without this, a worker that dies while starting (an import error, a broken ``__main__``)
        would cost one sample per restart and loop through the whole batch.
        """
        if worker.ready:
            return
        started = self._next_message(worker, _START_TIMEOUT_S)
        if started is None or started["kind"] != "started":
            _stop([worker.process], grace=1.0)
            self.close()
            raise RuntimeError(
                f"a scoring worker did not start within {_START_TIMEOUT_S:g} s "
                f"(exit code {worker.process.exitcode}); its stderr, if any, is above"
            )
        message = self._next_message(worker, self.import_timeout_s)
        if message is not None and message["kind"] == "ready":
            worker.ready = True
            return
        hung = message is None
        location = where(read_stack(worker.process, worker.stacks), self._user_file) if hung else ""
        _stop([worker.process])
        self.close()
        source = (
            f"reward.custom.path {self._user_file}"
            if self._user_file
            else f"the scoring function {self.fn!r}"
        )
        if hung:
            raise UserError(
                f"{source} did not finish importing within {self.import_timeout_s:g} s "
                f"(it hangs at import{': ' + location if location else ''})",
                hint="fix what the file runs at import, or raise reward.import_timeout_s if it is only slow",
            )
        if message is not None and message["kind"] == "fatal":
            raise UserError(
                f"{source} failed to import: {plain.clip_message(message.get('message'))}",
                hint="fix reward.custom.path (it must import cleanly on its own)",
            )
        raise UserError(
            f"{source}: its scoring process exited while importing it (exit code {worker.process.exitcode})",
            hint="fix reward.custom.path (it must import cleanly on its own, without exiting)",
        )
