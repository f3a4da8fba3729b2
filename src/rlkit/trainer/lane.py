"""The one queue of calls on the rollout workers: inline when colocated, on a thread when split.

A rollout engine runs one call at a time. When it shares its processes with the trainer
(``hardware.placement=colocated``) the calls run inline, in the trainer's order, as they always
did. When it has its own workers (``split``), :class:`RolloutLane` runs them on one driver thread,
in the order they were submitted, so that generation overlaps the trainer's passes while a weight
push still waits for the generation submitted before it (the in-flight rollouts finish on the
weights they started with).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class RolloutLane:
    """Calls on the rollout workers, one at a time and in order.

    Args:
        concurrent: Run calls on a driver thread (the rollout workers are separate); else inline.
    """

    def __init__(self, concurrent: bool) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rlkit-rollout") if concurrent else None

    @property
    def concurrent(self) -> bool:
        """Whether submitted calls run beside the caller (split placement)."""
        return self._pool is not None

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)``; inline it runs now (its exception propagates from here)."""
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        done: Future[T] = Future()
        done.set_result(fn(*args))
        return done

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` after every call submitted before it; its result."""
        return self.submit(fn, *args).result()

    def close(self) -> None:
        """Drop the calls not started; one running ends when its workers are shut down."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
