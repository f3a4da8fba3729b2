"""An asyncio front for any rollout engine: many trajectories in flight, requests batched.

Agent loops run as coroutines, one per trajectory, and ``await`` a generation at every turn. The
batcher gathers the pending requests and hands them to the engine's one blocking call,
:meth:`~rlkit.rollout.base.RolloutEngine.generate`, in a worker thread, so native, hf, vllm and
server engines all work unchanged. A batch goes out as soon as every live trajectory is waiting on
the engine, or ``max_wait_s`` after its first request: a trajectory busy with a tool never holds
up the others for longer than that, and requests that arrive during an engine call form the next
batch. With seeded requests (``SamplingParams.seed``) each request's completions do not depend on
what else is in its batch, so results are the same however the batches happen to form.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from rlkit.rollout.base import Completion, RolloutEngine, SamplingParams


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    future: asyncio.Future[list[Completion]]


class AsyncBatcher:
    """Batches the generation requests of concurrent coroutines into engine calls.

    Args:
        engine: Any rollout engine.
        max_wait_s: Longest a request waits for more requests to join its batch while some live
            trajectory is not waiting on the engine (running a tool, say).
        max_batch: Most requests per engine call (None: all pending).
        executor: Where the engine's blocking calls run (None: asyncio's default threads). A
            caller that makes many batchers over one engine passes one single-thread executor,
            so every call of the engine comes from the same thread.

    Use one batcher per event loop: ``async with batcher.live():`` around each trajectory, and
    ``await batcher.generate(ids, params)`` inside it.
    """

    def __init__(
        self,
        engine: RolloutEngine,
        *,
        max_wait_s: float = 0.01,
        max_batch: int | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.engine = engine
        self.executor = executor
        self.max_wait_s = max_wait_s
        self.max_batch = max_batch
        self._pending: list[_Request] = []
        self._live = 0
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self.calls = 0
        """Engine calls made so far (a metric: fewer calls = bigger batches)."""
        self.requests = 0
        """Requests served so far."""

    @asynccontextmanager
    async def live(self) -> AsyncIterator[None]:
        """Count a trajectory as live while the block runs (the batcher waits only for live ones)."""
        self._live += 1
        try:
            yield
        finally:
            self._live -= 1
            self._schedule_check()

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        """The ``params.n`` completions of one prompt, generated in a batch with other requests."""
        future: asyncio.Future[list[Completion]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(list(prompt_ids), params, future))
        self._schedule_check()
        return await future

    def _schedule_check(self) -> None:
        # decided on the next turn of the event loop, once every coroutine that is ready has run
        # up to its own request (a gather of N trajectories then gives one batch of N)
        asyncio.get_running_loop().call_soon(self._maybe_flush)

    def _maybe_flush(self) -> None:
        if self._busy or not self._pending:
            return
        if len(self._pending) >= self._live or (self.max_batch and len(self._pending) >= self.max_batch):
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_wait_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._busy and self._pending:
            self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        cut = self.max_batch or len(self._pending)
        batch, self._pending = self._pending[:cut], self._pending[cut:]
        self._busy = True
        asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[_Request]) -> None:
        try:
            prompts = [r.prompt_ids for r in batch]
            params = [r.params for r in batch]
            self.calls += 1
            self.requests += len(batch)
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self.executor, self.engine.generate, prompts, params)
        except BaseException as exc:  # every waiter sees the engine's failure
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
        else:
            for request, completions in zip(batch, outputs, strict=True):
                if not request.future.done():
                    request.future.set_result(list(completions))
        finally:
            self._busy = False
            self._schedule_check()
