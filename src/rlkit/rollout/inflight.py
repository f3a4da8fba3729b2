"""Weights that arrive while a generation runs: handed to the generating thread at a step boundary.

Partial rollouts (``trainer.partial_rollouts=continue``, docs/async.md) push new weights into a
rollout engine while its ``generate`` call is still running on another thread. Copying them in at
an arbitrary moment would mix two policies inside one forward pass, so the pushing thread only
posts them here (:meth:`WeightMailbox.deliver`) and waits; the generating thread loads them at its
next step boundary (:meth:`WeightMailbox.take`), where no forward is running, and then recomputes
the KV cache of its in-flight sequences under the new weights. With no generation running the
pusher loads them at once, as an ordinary ``update_weights``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class WeightMailbox:
    """One pending weight load, passed from a pushing thread to the thread running ``generate``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = False
        self._mail: Callable[[], None] | None = None
        self._error: BaseException | None = None

    @property
    def has_mail(self) -> bool:
        """Whether a load waits (read without the lock at every step: a stale answer delays it one step)."""
        return self._mail is not None

    @contextmanager
    def generating(self) -> Iterator[None]:
        """Wrap a ``generate`` call: loads delivered meanwhile wait for :meth:`take`.

        A load that arrives after the call's last step boundary is taken on the way out, so a
        pusher never waits for a generation that has nothing left to run.
        """
        with self._cond:
            self._running = True
        try:
            yield
        finally:
            with self._cond:
                self._running = False
            self.take()

    def deliver(self, load: Callable[[], None]) -> None:
        """Run ``load`` now if no generation runs, else at its next step boundary; returns after it ran.

        Raises:
            BaseException: whatever ``load`` raised (the generation raises it too: it must not go
                on with half-copied weights).
        """
        with self._cond:
            if not self._running:
                load()
                return
            if self._mail is not None:
                raise RuntimeError("a weight load is already waiting for the generation's next step")
            self._mail, self._error = load, None
            self._cond.wait_for(lambda: self._mail is None)
            error = self._error
        if error is not None:
            raise error

    def take(self) -> bool:
        """At a step boundary of the generating thread: run the waiting load, if any; whether one ran."""
        with self._cond:
            load = self._mail
            if load is None:
                return False
            try:
                load()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._mail = None
                self._cond.notify_all()
        return True
