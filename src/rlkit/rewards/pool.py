"""Scoring in worker processes: limits, per-sample timeouts, errors counted, never a crashed step.

:class:`ScoringPool` keeps ``num_workers`` processes alive across calls (``forkserver`` where the
OS has it, else ``spawn``), each bound to one scoring function. A call's samples go out in chunks
(one message per chunk each way, not per sample). A worker writes the position and start time of
the sample it is on into a small shared array, which is how the parent enforces a per-sample
timeout without a message per sample: when a sample overruns, the parent kills the worker, scores
that sample 0 (a timeout), starts a replacement and sends the rest of the chunk again. A sample
that raises scores 0 (an error); so does one whose worker dies (a segfault, ``os._exit``, the CPU
limit). Results come back in input order.

Each worker caps its address space (``RLIMIT_AS``: ``memory_limit_mb`` on top of what the fresh
worker already maps, so an allocation beyond it raises ``MemoryError`` and is counted as an error)
and its CPU time per sample (``RLIMIT_CPU``), where the OS allows. ``num_workers=0`` scores in
the calling process instead: fastest, but without timeouts or limits, so it is meant for the
trusted built-in scorers only; a :class:`~rlkit.rewards.custom.CustomRewardFn` refuses it.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from rlkit.errors import UserError
from rlkit.rewards.custom import CustomRewardFn

_log = logging.getLogger(__name__)

OK, ERROR, TIMEOUT = "ok", "error", "timeout"
_MAX_MESSAGES = 5
_MAX_CHUNK = 256
_CHUNKS_PER_WORKER = 4
_START_TIMEOUT_S = 120.0


@dataclass
class PoolResult:
    """The outcome of :meth:`ScoringPool.map`, aligned with its input.

    Attributes:
        values: Each call's return value; None where the call failed.
        status: ``ok``, ``error`` (raised, returned something unpicklable, or its worker died) or
            ``timeout`` per call.
        restarts: Workers replaced during the call.
        messages: Up to five distinct failure descriptions, for the log.
    """

    values: list[Any]
    status: list[str]
    restarts: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.status.count(ERROR)

    @property
    def timeouts(self) -> int:
        return self.status.count(TIMEOUT)


def _describe(exc: BaseException) -> str:
    """``Type: message (file:line)`` of the innermost frame, short enough for a log line."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}"[:400] + where


def _is_custom(fn: Callable[..., Any]) -> bool:
    return isinstance(getattr(fn, "func", fn), CustomRewardFn)


# ----------------------------------------------------------------------------- worker process


def _limit_memory(memory_limit_mb: int | None) -> None:
    """Cap the address space at what the worker maps now plus ``memory_limit_mb``."""
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


def _arm_cpu_limit(seconds: float) -> None:
    """Let the next sample use ``seconds`` more CPU; past that the kernel ends the worker (SIGXCPU).

    RLIMIT_CPU counts the process's whole life, so the soft limit is moved forward per sample.
    """
    try:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ImportError, ValueError, OSError):
        pass


def _send_results(conn: Connection, results: list[tuple[str, Any]]) -> None:
    try:
        conn.send(("results", results))
        return
    except Exception:  # an unpicklable value: find it and send the rest
        pass
    import pickle

    cleaned: list[tuple[str, Any]] = []
    for status, value in results:
        try:
            pickle.dumps(value)
            cleaned.append((status, value))
        except Exception as exc:
            cleaned.append((ERROR, f"result is not picklable: {_describe(exc)}"))
    conn.send(("results", cleaned))


def _worker_main(
    fn: Callable[..., Any],
    conn: Connection,
    progress: Any,
    memory_limit_mb: int | None,
    cpu_limit_s: float | None,
) -> None:
    """Serve chunks ``(timeout_s, [kwargs, ...])`` until ``None`` or the parent goes away."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_memory(memory_limit_mb)
    try:
        target = getattr(fn, "func", fn)
        if isinstance(target, CustomRewardFn):
            target.resolve()
    except BaseException as exc:
        conn.send(("fatal", _describe(exc)))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        timeout_s, calls = message
        results: list[tuple[str, Any]] = []
        for position, kwargs in enumerate(calls):
            progress[1] = time.monotonic()
            progress[0] = position
            _arm_cpu_limit(cpu_limit_s if cpu_limit_s is not None else timeout_s + 1.0)
            try:
                results.append((OK, fn(**kwargs)))
            except BaseException as exc:  # user code: SystemExit and MemoryError are its failures too
                results.append((ERROR, _describe(exc)))
        _send_results(conn, results)


# ----------------------------------------------------------------------------- parent side


@dataclass
class _Worker:
    process: Any
    conn: Connection
    progress: Any
    chunk: list[int] | None = None
    ready: bool = False


def _shutdown(workers: list[_Worker]) -> None:
    for worker in workers:
        try:
            worker.conn.send(None)
        except (OSError, ValueError):
            pass
    for worker in workers:
        worker.process.join(timeout=1.0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
    workers.clear()


def _default_start_method() -> str:
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


class ScoringPool:
    """Worker processes that call one scoring function on many keyword sets.

    Args:
        fn: The function; picklable (a module-level function, a
            :class:`~rlkit.rewards.custom.CustomRewardFn`, or a ``functools.partial`` of one).
        num_workers: Worker processes; 0 calls ``fn`` in this process (trusted built-in scorers
            only: no timeout, no limits, but exceptions are still caught and counted).
        timeout_s: Wall-clock seconds one call may take before its worker is killed.
        memory_limit_mb: Address space a worker may add to what it maps at start (None: no cap).
        cpu_limit_s: CPU seconds one call may use (None: ``timeout_s + 1``).
        chunk_size: Calls per message (None: about four chunks per worker, at most 256).
        start_method: ``forkserver`` or ``spawn`` (None: forkserver where available).

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
    ) -> None:
        if num_workers < 0 or timeout_s <= 0 or (chunk_size is not None and chunk_size < 1):
            raise ValueError(f"bad pool settings: {num_workers=}, {timeout_s=}, {chunk_size=}")
        if num_workers == 0 and _is_custom(fn):
            raise ValueError("custom reward code runs only in worker processes: use num_workers >= 1")
        self.fn = fn
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.cpu_limit_s = cpu_limit_s
        self.chunk_size = chunk_size
        self._ctx: Any = mp.get_context(start_method or _default_start_method())
        if self._ctx.get_start_method() == "forkserver":
            # Workers fork from the server with this module already imported (no-op once it runs).
            self._ctx.set_forkserver_preload(["__main__", __name__])
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        self._workers.extend(self._start_worker() for _ in range(num_workers))

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        progress = self._ctx.RawArray("d", 2)
        process = self._ctx.Process(
            target=_worker_main,
            args=(self.fn, child_conn, progress, self.memory_limit_mb, self.cpu_limit_s),
            name="rlkit-reward-worker",
            daemon=True,
        )
        try:
            process.start()
        except Exception as exc:
            raise ValueError(f"cannot start a scoring worker for {self.fn!r}: {exc}") from exc
        finally:
            child_conn.close()  # only the child holds its end now, so its exit reads as EOF here
        return _Worker(process, parent_conn, progress)

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._finalizer()

    def map(self, calls: Sequence[Mapping[str, Any]], *, timeout_s: float | None = None) -> PoolResult:
        """Call ``fn(**kwargs)`` for each element of ``calls``.

        Args:
            calls: Keyword sets, one per call.
            timeout_s: Per-call timeout for this map (None: the pool's).

        Returns:
            Values and statuses in input order.

        Raises:
            UserError: A worker could not load a custom scoring function (import error in the file).
        """
        if not self._finalizer.alive and self.num_workers:
            raise RuntimeError("ScoringPool.map after close()")
        if self.num_workers == 0:
            return self._map_inline(calls)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        result = PoolResult(values=[None] * len(calls), status=[""] * len(calls))
        size = self.chunk_size or max(
            1, min(_MAX_CHUNK, math.ceil(len(calls) / (self.num_workers * _CHUNKS_PER_WORKER)))
        )
        queue = deque(list(range(i, min(i + size, len(calls)))) for i in range(0, len(calls), size))
        remaining = len(calls)
        while remaining:
            for slot, worker in enumerate(self._workers):
                if worker.chunk is None and queue:
                    if not worker.process.is_alive():
                        worker = self._replace(slot, result)
                    self._wait_ready(worker)
                    self._dispatch(worker, queue.popleft(), calls, timeout)
            remaining -= self._collect(queue, timeout, result)
        if result.errors or result.timeouts:
            _log.warning(
                "reward scoring: %d errors, %d timeouts of %d (%s)",
                result.errors,
                result.timeouts,
                len(calls),
                "; ".join(result.messages),
            )
        return result

    def _map_inline(self, calls: Sequence[Mapping[str, Any]]) -> PoolResult:
        result = PoolResult(values=[None] * len(calls), status=[OK] * len(calls))
        for i, kwargs in enumerate(calls):
            try:
                result.values[i] = self.fn(**kwargs)
            except Exception as exc:
                result.status[i] = ERROR
                self._note(result, _describe(exc))
        return result

    @staticmethod
    def _note(result: PoolResult, message: str) -> None:
        if len(result.messages) < _MAX_MESSAGES and message not in result.messages:
            result.messages.append(message)

    def _dispatch(
        self, worker: _Worker, chunk: list[int], calls: Sequence[Mapping[str, Any]], timeout: float
    ) -> None:
        # The worker is idle (blocked in recv), so the parent may reset its progress without a race.
        worker.progress[0] = 0
        worker.progress[1] = time.monotonic()
        worker.chunk = chunk
        try:
            worker.conn.send((timeout, [calls[i] for i in chunk]))
        except (OSError, ValueError):
            pass  # a dead worker: its EOF is picked up by _collect

    def _collect(self, queue: deque[list[int]], timeout: float, result: PoolResult) -> int:
        """Wait for results or the first deadline; returns how many calls got a final status."""
        busy = [w for w in self._workers if w.chunk is not None]
        deadline = min(w.progress[1] for w in busy) + timeout
        ready = wait([w.conn for w in busy], timeout=max(0.0, deadline - time.monotonic()))
        finished = 0
        for slot, worker in enumerate(self._workers):
            if worker.chunk is None:
                continue
            if worker.conn in ready:
                try:
                    _, payload = worker.conn.recv()
                except (EOFError, OSError):
                    finished += self._fail(slot, ERROR, "scoring worker died", queue, result)
                    continue
                for index, (status, value) in zip(worker.chunk, payload, strict=True):
                    result.status[index] = status
                    if status == OK:
                        result.values[index] = value
                    else:
                        self._note(result, str(value))
                finished += len(worker.chunk)
                worker.chunk = None
            elif time.monotonic() > worker.progress[1] + timeout:
                finished += self._fail(slot, TIMEOUT, f"a sample ran past {timeout:g}s", queue, result)
        return finished

    def _fail(self, slot: int, status: str, message: str, queue: deque[list[int]], result: PoolResult) -> int:
        """Kill the worker in ``slot``, give its current call ``status`` and requeue the rest."""
        worker = self._workers[slot]
        assert worker.chunk is not None
        worker.process.kill()
        worker.process.join()
        position = min(int(worker.progress[0]), len(worker.chunk) - 1)
        index = worker.chunk[position]
        result.status[index] = status
        exitcode = worker.process.exitcode
        self._note(
            result,
            message
            if status == TIMEOUT or exitcode == -signal.SIGKILL
            else f"{message} (exit code {exitcode})",
        )
        rest = worker.chunk[:position] + worker.chunk[position + 1 :]
        if rest:
            queue.appendleft(rest)
        worker.chunk = None
        self._replace(slot, result)
        return 1

    def _replace(self, slot: int, result: PoolResult) -> _Worker:
        old = self._workers[slot]
        if old.process.is_alive():
            old.process.kill()
        old.process.join()
        old.conn.close()
        self._workers[slot] = self._start_worker()
        result.restarts += 1
        return self._workers[slot]

    def _wait_ready(self, worker: _Worker) -> None:
        """Block until a new worker has loaded the function; a worker that cannot is fatal.

        Without this, a worker that dies while starting (an import error, a broken ``__main__``)
        would cost one sample per restart and loop through the whole batch.
        """
        if worker.ready:
            return
        message: tuple[str, Any] = ("", None)
        if worker.conn.poll(_START_TIMEOUT_S):
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                pass
        if message[0] == "ready":
            worker.ready = True
            return
        worker.process.join(timeout=1.0)
        self.close()
        if message[0] == "fatal":
            raise UserError(
                f"reward.custom: the scoring function failed to load in a worker: {message[1]}",
                hint="fix reward.custom.path (it must import cleanly on its own)",
            )
        raise RuntimeError(
            f"a scoring worker failed to start (exit code {worker.process.exitcode}); see its stderr above"
        )
