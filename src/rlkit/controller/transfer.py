"""Weights from the actor's rank 0 to every rollout rank over a collective of their own (split placement).

A :class:`TransferGroup` is a stateless process group (``ProcessGroupGloo`` on CPU,
``ProcessGroupNCCL`` on CUDA) over a TCPStore that the actor's rank 0 serves on its node address
with a port the OS picks. It spans the actor's rank 0 (rank 0 here) and every rollout rank
(ranks 1..n) and never touches the workers' default process group, which FSDP uses.

What goes where: the *layout* (names, shapes, dtypes, bucket boundaries), the version and the
checksums travel through Ray with the calls; only the tensor bytes go through the collective, in
flat ``uint8`` buckets of about ``WEIGHT_BUCKET_MB``: first a header ``[version, buckets, bytes]``
(a receiver one transfer out of step fails at once), then one broadcast per bucket, received into a
buffer of its own and handed on tensor by tensor (so a receiver's engine loads bucket k while
bucket k+1 is in flight). Every bucket's checksum is the int64 sum of its int32 words: exact,
the same in any thread count, and changed by any corrupted word.

Every collective waits at most until the transfer's deadline; one that does not finish raises
:class:`WeightTransferTimeout` naming the stage (``joining``, ``header``, ``bucket k of n``) and
the rank, instead of waiting forever.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import PrefixStore, TCPStore  # type: ignore[attr-defined]

from rlkit.controller.causes import first_line

#: Byte alignment of every tensor inside a bucket (any dtype's view of its slice is then aligned).
_ALIGN = 16
#: How long rank 0's own connection to the store it serves may take (local: well under a second).
_SERVE_TIMEOUT_S = 30.0
#: The store's key prefix: the group's keys never collide with another group's on the same store.
_PREFIX = "rlkit-weights/"


class WeightTransferError(RuntimeError):
    """A weight transfer between pools failed (the message names the stage and the rank)."""


class WeightTransferTimeout(WeightTransferError):
    """A collective of a weight transfer did not finish by the transfer's deadline."""


@dataclass(frozen=True)
class Slot:
    """Where one tensor lies in its bucket: ``nbytes`` bytes from ``offset``."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Bucket:
    """The tensors of one broadcast and its size in bytes (a multiple of :data:`_ALIGN`)."""

    slots: tuple[Slot, ...]
    nbytes: int


def plan_buckets(tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: float) -> list[Bucket]:
    """Cut ``tensors`` (in order) into buckets that close once they hold ``bucket_bytes`` or more.

    The same rule as the object-store export, so both transports cut a model alike; a tensor
    larger than ``bucket_bytes`` is a bucket of its own.
    """
    buckets: list[Bucket] = []
    slots: list[Slot] = []
    size = 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        slots.append(Slot(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."), size, nbytes))
        size += -(-nbytes // _ALIGN) * _ALIGN
        if size >= bucket_bytes:
            buckets.append(Bucket(tuple(slots), size))
            slots, size = [], 0
    if slots:
        buckets.append(Bucket(tuple(slots), size))
    return buckets


def bucket_checksum(flat: torch.Tensor) -> int:
    """The int64 sum of a bucket's int32 words (exact: no rounding, no dependence on thread count)."""
    return int(flat.view(torch.int32).sum(dtype=torch.int64))


def pack(bucket: Bucket, tensors: Iterable[tuple[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
    """The flat ``uint8`` bytes of ``bucket``, filled from ``tensors`` (which must follow its layout).

    Raises:
        WeightTransferError: a tensor's name, shape or dtype is not the layout's.
    """
    flat = torch.zeros(bucket.nbytes, dtype=torch.uint8, device=device)
    for slot, (name, tensor) in zip(bucket.slots, tensors, strict=True):
        got = (name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        if got != (slot.name, slot.shape, slot.dtype):
            raise WeightTransferError(
                f"weight transfer: the actor yields {got}, the layout expects "
                f"{(slot.name, slot.shape, slot.dtype)} (the model changed since the group was opened)"
            )
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        flat[slot.offset : slot.offset + slot.nbytes].copy_(data)
    return flat


def unpack(bucket: Bucket, flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` views into a received bucket's bytes (no copy)."""
    for slot in bucket.slots:
        piece = flat[slot.offset : slot.offset + slot.nbytes]
        yield slot.name, piece.view(getattr(torch, slot.dtype)).view(slot.shape)


class TransferGroup:
    """One rank of the stateless group the weights travel through (see the module docstring).

    Args:
        pg: The process group (rank 0 is the actor's rank 0).
        rank: This process's rank in it.
        device: Where its buffers live (the collective's device).
        store: The TCPStore (kept alive: rank 0 serves it).
    """

    def __init__(self, pg: Any, rank: int, device: torch.device, store: Any) -> None:
        self.pg, self.rank, self.device, self._store = pg, rank, device, store

    @staticmethod
    def serve(host: str, world: int) -> Any:
        """The TCPStore the group meets on, served by this process (rank 0) on a port the OS picks.

        Its own connection gets :data:`_SERVE_TIMEOUT_S`; :meth:`join` sets the transfer's deadline.
        """
        timeout = timedelta(seconds=_SERVE_TIMEOUT_S)
        return TCPStore(host, 0, world, True, timeout=timeout, wait_for_workers=False)

    @classmethod
    def join(
        cls,
        *,
        host: str,
        port: int,
        rank: int,
        world: int,
        device: torch.device,
        local_host: str,
        deadline: float,
        timeout_s: float,
        stage: str,
        store: Any = None,
    ) -> TransferGroup:
        """Join the group of ``world`` ranks meeting at ``host:port`` (blocks until all joined).

        ``store`` is rank 0's own served store (:meth:`serve`); the others connect to it. The
        rendezvous waits until ``deadline``; ``timeout_s`` (``hardware.sync_timeout_s``) is the
        backend's own limit on every later collective, a backstop behind the per-call deadlines.

        Raises:
            WeightTransferTimeout: not every rank joined by ``deadline`` (``time.monotonic()``).
        """
        remaining = max(deadline - time.monotonic(), 0.001)
        timeout = timedelta(seconds=remaining)
        where = f"{stage}, joining the group of {world} ranks at {host}:{port}, rank {rank}"
        failure: BaseException | None = None
        try:
            if store is None:
                store = TCPStore(host, port, world, False, timeout=timeout, wait_for_workers=False)
            store.set_timeout(timeout)  # the rendezvous waits on the store's keys at most this long
            ops = timedelta(seconds=max(timeout_s, remaining))
            pg = _new_group(PrefixStore(_PREFIX, store), rank, world, device, local_host, ops)
        except Exception as exc:  # noqa: BLE001 -- a store or rendezvous failure, reported as one line
            failure = exc
        if failure is not None:  # raised outside the handler: the one line is the root cause
            if time.monotonic() >= deadline - 0.05:
                raise WeightTransferTimeout(
                    f"{where}: not every rank joined within {remaining:.3g} s "
                    "(a rollout or actor worker never reached the transfer): raise hardware.sync_timeout_s "
                    "if it is only slow"
                )
            raise WeightTransferError(f"{where}: {type(failure).__name__}: {first_line(failure)}")
        group = cls(pg, rank, device, store)
        # NCCL connects at its first collective: one tiny broadcast makes joining mean connected
        group.broadcast(torch.zeros(1, device=device), deadline, f"{stage}, joining the group")
        return group

    def broadcast(self, tensor: torch.Tensor, deadline: float, stage: str) -> None:
        """Broadcast ``tensor`` from rank 0 in place, waiting at most until ``deadline``.

        Raises:
            WeightTransferTimeout: the broadcast did not finish in time (``stage`` names it).
            WeightTransferError: the collective failed (a peer died).
        """
        options = dist.BroadcastOptions()
        options.rootRank, options.rootTensor = 0, 0
        remaining = deadline - time.monotonic()
        where = f"{stage}, rank {self.rank}"
        failure: BaseException | None = None
        try:
            if remaining > 0:
                self.pg.broadcast([tensor], options).wait(timedelta(seconds=remaining))
        except Exception as exc:  # noqa: BLE001 -- gloo and NCCL raise RuntimeError or DistError
            failure = exc
        if remaining <= 0 or (failure is not None and time.monotonic() >= deadline - 0.05):
            self._abort()  # raised outside the handler: the one line is the root cause
            raise WeightTransferTimeout(
                f"{where}: did not finish by the transfer's deadline (hardware.sync_timeout_s; "
                "a peer stopped or is stuck): raise hardware.sync_timeout_s if it is only slow"
            )
        if failure is not None:
            raise WeightTransferError(f"{where}: {type(failure).__name__}: {first_line(failure)}")

    def _abort(self) -> None:
        """After a timeout the group cannot be trusted: NCCL's communicator is aborted (gloo has none)."""
        abort = getattr(self.pg, "abort", None)
        if callable(abort) and self.device.type == "cuda":
            try:
                abort()
            except Exception:  # noqa: BLE001 -- best effort; the run is failing anyway
                pass


def header(version: int, buckets: list[Bucket], device: torch.device) -> torch.Tensor:
    """``[version, buckets, bytes]`` (int64): what the sender announces before the first bucket."""
    total = sum(b.nbytes for b in buckets)
    return torch.tensor([version, len(buckets), total], dtype=torch.int64, device=device)


def send(
    group: TransferGroup,
    version: int,
    buckets: list[Bucket],
    tensors: Iterable[tuple[str, torch.Tensor]],
    deadline: float,
    stage: str,
) -> list[int]:
    """Rank 0: broadcast the header, then every bucket packed from ``tensors``; the buckets' checksums."""
    group.broadcast(header(version, buckets, group.device), deadline, f"{stage}, header")
    stream = iter(tensors)
    sums = []
    for k, bucket in enumerate(buckets):
        flat = pack(bucket, (next(stream) for _ in bucket.slots), group.device)
        sums.append(bucket_checksum(flat))
        group.broadcast(flat, deadline, f"{stage}, bucket {k + 1} of {len(buckets)}")
    return sums


def receive(
    group: TransferGroup, version: int, buckets: list[Bucket], deadline: float, stage: str, sums: list[int]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Ranks 1..n: check the header, then yield each bucket's tensors as it arrives; appends to ``sums``.

    Raises:
        WeightTransferError: the header is not this transfer's (the two sides are out of step).
    """
    got = torch.zeros(3, dtype=torch.int64, device=group.device)
    group.broadcast(got, deadline, f"{stage}, header")
    expected = header(version, buckets, group.device)
    if not torch.equal(got, expected):
        sent, want = got.tolist(), expected.tolist()
        raise WeightTransferError(
            f"{stage}, header, rank {group.rank}: the sender sends version {sent[0]} in {sent[1]} buckets "
            f"({sent[2]} bytes), this rank expects version {want[0]} in {want[1]} ({want[2]} bytes): "
            "the two sides of the transfer are out of step"
        )
    for k, bucket in enumerate(buckets):
        flat = torch.empty(bucket.nbytes, dtype=torch.uint8, device=group.device)
        group.broadcast(flat, deadline, f"{stage}, bucket {k + 1} of {len(buckets)}")
        sums.append(bucket_checksum(flat))
        yield from unpack(bucket, flat)


def _new_group(
    store: Any, rank: int, world: int, device: torch.device, local_host: str, timeout: timedelta
) -> Any:
    """``ProcessGroupGloo`` (bound to this node's address) or ``ProcessGroupNCCL``, built directly."""
    if device.type == "cuda":
        nccl_options = dist.ProcessGroupNCCL.Options()
        nccl_options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, nccl_options)
    gloo_options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
    gloo_options._timeout = timeout
    gloo_options._devices = [dist.ProcessGroupGloo.create_device(hostname=local_host)]
    return dist.ProcessGroupGloo(store, rank, world, gloo_options)
