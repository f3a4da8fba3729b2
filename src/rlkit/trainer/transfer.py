"""The collective weight transport between separate pools (``hardware.weight_transfer=collective``).

With ``hardware.placement=split`` the rollout engine has workers of its own, and after every update
the actor's weights must reach them. Two transports do it (docs/async.md says what each costs):

- ``object_store``: the actor's rank 0 puts buckets into Ray's object store, the rollout ranks get
  them (:meth:`~rlkit.trainer.workers.ActorWorker.export_weights`); every byte is copied into
  shared memory and out again, and crosses nodes through Ray's object transfer.
- ``collective``: the actor's rank 0 broadcasts the buckets to every rollout rank over a process
  group of their own (:mod:`rlkit.controller.transfer`: gloo on CPU, NCCL on GPUs), the bytes
  going device to device; only the layout and the checksums go through Ray.

One push of the collective transport (:meth:`CollectiveTransfer.push`):

1. the first push opens the group: the actor's ranks cut the weights into buckets (the layout) and
   rank 0 serves the group's store; the layout is kept for the whole run;
2. the receive is queued on the rollout lane, so it starts after the rollouts submitted before it
   (they finish on the weights they started with): the trainer waits for those first;
3. once the receivers start, the actor sends; both sides are in flight together and each side's
   collectives wait at most ``hardware.sync_timeout_s`` from the start of its call: one that does
   not finish fails with one line naming the stage (``bucket k of n``) and the rank, and the stacks
   of every worker of both pools go to ``RUN/stacks-<step>-<stage>.txt``;
4. every receiver checks its engine took what it received (:func:`~rlkit.rollout.weight_sync.check_push`),
   and the driver checks that every bucket arrived as it was sent (exact checksums).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future
from concurrent.futures import wait as wait_futures
from typing import Any

import ray
import torch

from rlkit.config.schema import RlkitConfig
from rlkit.controller import WorkerError, WorkerGroup, worker_context
from rlkit.controller.transfer import TransferGroup, WeightTransferError, plan_buckets, receive, send
from rlkit.errors import UserError
from rlkit.rollout.weight_sync import ChecksumTap, check_push
from rlkit.trainer.lane import RolloutLane

#: How much longer than ``hardware.sync_timeout_s`` the driver waits for a call of a transfer: the
#: workers' own deadline fires first and names the bucket; this one only catches a worker that hangs
#: outside a collective.
CALL_MARGIN_S = 10.0
#: How long the driver waits for the other side's error after one side's transfer failed: the side
#: that failed first for its own reason (not a timeout) names the cause.
_OTHER_SIDE_GRACE_S = 3.0
TIMEOUT_KEY = "hardware.sync_timeout_s"
_DEVICE_BACKENDS = {"cpu": "gloo", "cuda": "nccl", "rocm": "nccl"}


def resolve_weight_transfer(cfg: RlkitConfig, device: str) -> str:
    """Resolve ``hardware.weight_transfer`` in place (``auto`` included), so config.yaml names it.

    ``auto`` is ``collective`` with split placement on a device whose backend this torch has
    (gloo on CPU, NCCL on CUDA and ROCm), else ``object_store`` (also with
    ``trainer.partial_rollouts=continue``, whose pushes reach a running generation).

    Raises:
        UserError: ``collective`` on a device without a supported backend (NPU); without split
            placement it was refused at compose time (:mod:`rlkit.config.rules`).
    """
    hw = cfg.hardware
    backend = _DEVICE_BACKENDS.get(device)
    available = backend is not None and (backend == "gloo" or torch.distributed.is_nccl_available())
    if hw.weight_transfer == "auto":  # partial rollouts take weights mid-generation: object store
        collective = hw.placement == "split" and available and cfg.trainer.partial_rollouts != "continue"
        hw.weight_transfer = "collective" if collective else "object_store"
    elif hw.weight_transfer == "collective" and not available:
        raise UserError(
            f"hardware.weight_transfer=collective has no backend on {device} (gloo on CPU, NCCL on CUDA/ROCm"
            f"{'' if backend is None else '; this torch has no NCCL'})",
            hint="set hardware.weight_transfer=object_store (or auto)",
        )
    return hw.weight_transfer


class WeightSender:
    """The actor's side (every rank gathers; rank 0 serves the group's store and sends)."""

    def __init__(self, role: Any, dtype: torch.dtype) -> None:
        self.role, self.dtype = role, dtype
        self.rank, self.device = worker_context().rank, worker_context().device
        self._store: Any = None
        self._group: TransferGroup | None = None
        self._plan: dict[str, Any] = {}

    def open(self, world: int, bucket_mb: float) -> dict[str, Any]:
        """The layout of the weights, and on rank 0 the address of the group's store (a port the OS picks)."""
        buckets = plan_buckets(self.role.named_full_tensors(dtype=self.dtype), bucket_mb * 2**20)
        if self.rank != 0:
            return {}
        host = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self._store = TransferGroup.serve(host, world)
        self._plan = {"host": host, "port": int(self._store.port), "world": world, "buckets": buckets}
        return self._plan

    def send(self, step: int, timeout_s: float) -> dict[str, Any]:
        """Gather and broadcast the weights of ``step``; rank 0 returns the buckets' checksums it sent."""
        deadline = time.monotonic() + timeout_s
        tensors = self.role.named_full_tensors(dtype=self.dtype)
        if self.rank != 0:
            for _ in tensors:  # every item is a collective of the actor's ranks
                pass
            return {}
        stage = f"weight transfer after step {step}"
        plan = self._plan
        if self._group is None:
            self._group = TransferGroup.join(
                host=plan["host"],
                port=plan["port"],
                rank=0,
                world=plan["world"],
                device=self.device,
                local_host=plan["host"],
                deadline=deadline,
                timeout_s=timeout_s,
                stage=stage,
                store=self._store,
            )
        return {"buckets": send(self._group, step, plan["buckets"], tensors, deadline, stage)}


class WeightReceiver:
    """A rollout rank's side: receive the buckets into the engine, tensor by tensor, and check the push."""

    def __init__(self) -> None:
        self.rank, self.device = worker_context().rank + 1, worker_context().device
        self._group: TransferGroup | None = None

    def receive(self, engine: Any, step: int, plan: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Stream the weights of ``step`` into ``engine``; the engine's version and checksum, and the
        checksums of the buckets as they arrived.

        Raises:
            WeightTransferError: a collective failed or missed the deadline (naming the stage).
            WeightSyncError: the engine did not take what it received.
        """
        deadline = time.monotonic() + timeout_s
        stage = f"weight transfer after step {step}"
        if self._group is None:
            here = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
            self._group = TransferGroup.join(
                host=plan["host"],
                port=plan["port"],
                rank=self.rank,
                world=plan["world"],
                device=self.device,
                local_host=here,
                deadline=deadline,
                timeout_s=timeout_s,
                stage=stage,
            )
        group, sums, failed = self._group, list[int](), list[WeightTransferError]()

        def stream() -> Any:
            try:
                yield from receive(group, step, plan["buckets"], deadline, stage, sums)
            except WeightTransferError as exc:
                failed.append(exc)
                raise

        before = engine.weight_version
        tap = ChecksumTap(stream())
        try:
            engine.update_weights(tap)
        except Exception:
            if not failed:
                raise
        if failed:  # the engine may wrap it: the transfer's own error names the stage (raised bare)
            raise failed[0].with_traceback(None)
        return {**check_push(step, engine, before, tap.checksums()), "buckets": sums}


class CollectiveTransfer:
    """The driver's side of the collective transport: one :meth:`push` per weight sync.

    Args:
        actors: The trained roles' group (its ``actor`` role sends from rank 0).
        receivers: The rollout engine's own group (split placement).
        lane: The queue of calls on the rollout workers (the receive waits its turn in it).
        dtype: The rollout engine's dtype (the actor casts before sending, as the engine checksums).
        bucket_mb: Size of one broadcast.
    """

    def __init__(
        self, actors: WorkerGroup, receivers: WorkerGroup, lane: RolloutLane, dtype: str, bucket_mb: float
    ) -> None:
        self.actors, self.receivers, self.lane = actors, receivers, lane
        self.dtype, self.bucket_mb = dtype, bucket_mb
        self.plan: dict[str, Any] | None = None

    def push(self, step: int, timeout_s: float) -> None:
        """Move the actor's weights of ``step`` to every rollout rank and check they arrived intact.

        Raises:
            WorkerError: a side failed or missed its deadline (one line naming the stage and rank).
        """
        limit = timeout_s + CALL_MARGIN_S
        if self.plan is None:
            world = 1 + self.receivers.world_size
            self.plan = self.actors.call(
                "actor", "open_weight_transfer", world, self.dtype, self.bucket_mb,
                timeout_s=limit, timeout_key=TIMEOUT_KEY,
            )  # fmt: skip
        plan, started = self.plan, Future[None]()

        def receive_call() -> list[dict[str, Any]]:
            started.set_result(None)
            return self.receivers.call(  # type: ignore[no-any-return]
                "rollout", "receive_weights", step, plan, timeout_s, timeout_s=limit, timeout_key=TIMEOUT_KEY
            )

        received = self.lane.submit(receive_call)
        # the rollouts submitted before run first: the actor starts once the receivers do
        wait_futures([started, received], return_when=FIRST_COMPLETED)  # type: ignore[arg-type]
        if received.done():
            received.result()  # a receive that failed before the send started raises here
        sending = _in_thread(
            self.actors.call,
            "actor",
            "send_weights",
            step,
            timeout_s,
            timeout_s=limit,
            timeout_key=TIMEOUT_KEY,
        )
        # both sides in flight: the first to fail ends the wait (a receiver whose engine refused a
        # tensor is reported at once, not after the sender's deadline)
        wait_futures([sending, received], return_when=FIRST_EXCEPTION)
        for side, other in ((received, sending), (sending, received)):
            exc = side.exception() if side.done() else None
            if isinstance(exc, WorkerError):
                raise self._failure(exc, other) from None
            if exc is not None:
                raise exc
        check_buckets(step, sending.result(), received.result())

    def _failure(self, exc: WorkerError, other: Future[Any]) -> WorkerError:
        """The error to report: the other side's when it failed for its own reason (within a short
        grace), else ``exc``, with every worker's stacks of both pools after a timeout."""
        if exc.exc_type == "WeightTransferTimeout":
            try:
                other.result(timeout=_OTHER_SIDE_GRACE_S)
            except WorkerError as theirs:
                if theirs.exc_type != "WeightTransferTimeout":
                    return theirs
            except Exception:  # noqa: BLE001 -- still running (a timeout of its own follows), or done
                pass
        if exc.exc_type != "WeightTransferTimeout" or exc.stacks:
            return exc
        stacks = "\n".join(
            f"--- {name} workers ---\n{group.dump_stacks()}"
            for name, group in (("trainer", self.actors), ("rollout", self.receivers))
        )
        return WorkerError(
            str(exc), role=exc.role, method=exc.method, rank=exc.rank, exc_type=exc.exc_type,
            remote_traceback=exc.remote_traceback, stacks=stacks,
        )  # fmt: skip


def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
    """``fn(*args, **kwargs)`` on a daemon thread of its own: its future (a push waits on both sides).

    A daemon thread, so a send still blocked when the run fails never holds the interpreter's exit
    (the run's close kills the workers, which ends the call).
    """
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 -- handed to the waiting driver
            future.set_exception(exc)

    threading.Thread(target=run, name="rlkit-weight-send", daemon=True).start()
    return future


def check_buckets(step: int, sent: dict[str, Any], received: list[dict[str, Any]]) -> None:
    """Every rollout rank received every bucket as the actor sent it (exact int64 sums).

    Raises:
        WorkerError: one line naming the bucket and the rank whose bytes differ.
    """
    expected = sent["buckets"]
    for rank, got in enumerate(received):
        for k, (want, seen) in enumerate(zip(expected, got["buckets"], strict=True)):
            if want != seen:
                raise WorkerError(
                    f"weight transfer after step {step}, bucket {k + 1} of {len(expected)}, rollout rank "
                    f"{rank}: the bytes received (checksum {seen}) are not those sent ({want}): they "
                    "changed in flight",
                    role="rollout",
                    method="receive_weights",
                    rank=rank,
                    exc_type="WeightSyncError",
                )


__all__ = [
    "CollectiveTransfer",
    "WeightReceiver",
    "WeightSender",
    "check_buckets",
    "resolve_weight_transfer",
]
