"""The process behind one slot of a worker group: a Ray actor that hosts every colocated role.

:class:`WorkerHost` is the body of the Ray actor (:class:`~rlkit.controller.group.WorkerGroup`
makes it remote). It sets the rank and device environment, joins ``torch.distributed``, builds the
role objects, and runs the role methods the controller calls. Its actors run with four threads
(``max_concurrency=4``) so that :meth:`WorkerHost.dump_stacks` can answer while a call is stuck,
:meth:`WorkerHost.probe` (live gauges) while one runs, and a rollout worker can take a weight push
while it generates (partial rollouts, ``trainer.partial_rollouts=continue``).

Exceptions inside role code (any ``BaseException`` but an exit or interrupt: torch's
``CheckpointException`` is one) are caught here and returned as a :class:`RemoteFailure` (type,
message, the one-line root cause from :mod:`rlkit.controller.causes`, traceback), which the
controller turns into one :class:`WorkerError` (a :class:`WorkerUserError` for a UserError).

Every worker also watches the driver that started it (:func:`watch_driver`): when the driver
process is gone, the worker exits within about a second, so a dead run never writes into its
folder again.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import ray
import torch
import torch.distributed as dist

from rlkit.controller.causes import describe
from rlkit.controller.dispatch import DISPATCH_ATTR, PROBE_ATTR
from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.hardware import device as hw
from rlkit.profiling.nvtx import trace_range

# Raised through, never turned into a RemoteFailure: the process is meant to end.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)
# How often a worker checks that its driver is still alive.
_WATCH_INTERVAL_S = 0.5
# The driver's OMP_NUM_THREADS, passed to CPU workers (Ray gives an actor of one CPU 1 thread).
CPU_THREADS_ENV = "RLKIT_CPU_THREADS"


class WorkerError(RuntimeError):
    """A call on a worker group failed: an exception in role code, a dead worker, or an overrun deadline.

    ``str()`` of it is one line (where it failed and the root cause); :meth:`details` adds the
    remote traceback and the stacks.

    Attributes:
        role: Role of the failed call (None while the group starts).
        method: Method of the failed call.
        rank: Rank that failed first (None for a deadline, which concerns every rank).
        exc_type: Type name of the remote exception, if there was one.
        remote_traceback: The remote traceback text, if any.
        stacks: The Python stacks of every rank, dumped when a deadline passed.
        error_log: Where the driver wrote the full report (set by the trainer, else None).
        stacks_file: Where the driver wrote ``stacks`` (set by the trainer, else None).
    """

    def __init__(
        self,
        message: str,
        *,
        role: str | None = None,
        method: str | None = None,
        rank: int | None = None,
        exc_type: str | None = None,
        remote_traceback: str | None = None,
        stacks: str | None = None,
    ) -> None:
        super().__init__(message)
        self.role, self.method, self.rank = role, method, rank
        self.exc_type, self.remote_traceback, self.stacks = exc_type, remote_traceback, stacks
        self.error_log: str | None = None
        self.stacks_file: str | None = None

    def details(self) -> str:
        """The one line, then the full remote traceback and the stacks (what ``RUN/error.log`` holds)."""
        parts = [str(self)]
        if self.remote_traceback:
            parts.append(f"--- remote traceback (rank {self.rank}) ---\n{self.remote_traceback.rstrip()}")
        if self.stacks:
            parts.append(f"--- Python stacks of every rank ---\n{self.stacks.rstrip()}")
        return "\n".join(parts) + "\n"


class WorkerUserError(WorkerError, UserError):
    """A :class:`~rlkit.errors.UserError` raised by role code: it reads as that UserError's one line."""

    def __init__(self, message: str, hint: str | None, **where: object) -> None:
        WorkerError.__init__(self, message, **where)  # type: ignore[arg-type]
        self.message, self.hint = message, hint

    def __str__(self) -> str:
        return UserError.__str__(self)


@dataclass(frozen=True)
class RemoteFailure:
    """An exception raised by role code on one rank, as plain data that pickles everywhere.

    ``cause`` is the one-line root cause (:func:`rlkit.controller.causes.describe`);
    ``user_message``/``user_hint`` are set when that cause is a UserError.
    """

    rank: int
    exc_type: str
    message: str
    traceback: str
    cause: str = ""
    user_message: str | None = None
    user_hint: str | None = None


@dataclass(frozen=True)
class WorkerContext:
    """Where a worker runs; roles read it with :func:`worker_context`.

    ``roles`` holds the role objects of this process, filled in construction order, so a role can
    reach a colocated one (e.g. the rollout engine takes the actor's weights in-process).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    roles: dict[str, Any] = field(default_factory=dict)


_CONTEXT: WorkerContext | None = None


def worker_context() -> WorkerContext:
    """The :class:`WorkerContext` of the calling worker process.

    Raises:
        RuntimeError: Outside a worker of a :class:`~rlkit.controller.group.WorkerGroup`.
    """
    if _CONTEXT is None:
        raise RuntimeError("worker_context() is only available inside a worker of a WorkerGroup")
    return _CONTEXT


class WorkerHost:
    """Body of the Ray actor of one rank; the controller calls these methods, role code never does."""

    def __init__(self) -> None:
        self._rank = -1
        self._roles: dict[str, Any] = {}

    def node_info(self) -> dict[str, Any]:
        """This process's node address and Ray node id, pid, and a free TCP port on the node (rank 0's is the master port)."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        node = ray.get_runtime_context().get_node_id()
        return {"ip": ip, "node_id": node, "pid": os.getpid(), "port": port}

    def setup(
        self,
        env: dict[str, str],
        device: str,
        roles: dict[str, type],
        init_kwargs: dict[str, dict[str, Any]],
        dist_timeout_s: float,
        driver: dict[str, Any] | None = None,
    ) -> RemoteFailure | None:
        """Set the rank env, pin the device, join the process group, then build each role in order.

        ``driver`` (``{"host", "pid", "create_time"}`` of the driver process) starts
        :func:`watch_driver` when the driver runs on this host.
        """
        global _CONTEXT
        self._rank = int(env["RANK"])
        if driver is not None:
            watch_driver(driver)
        try:
            os.environ.update(env)
            _pin_visible_devices(device)
            if device != "cpu" and hw.device_type() == "cpu":
                raise RuntimeError(f"the pool is on {device} but this worker sees no such device")
            dev = hw.current_device(0)
            hw.set_device(dev)
            if device == "cpu":
                torch.set_num_threads(cpu_threads(int(env["LOCAL_WORLD_SIZE"])))
            dist.init_process_group(
                backend=hw.dist_backend(device),
                init_method="env://",
                rank=self._rank,
                world_size=int(env["WORLD_SIZE"]),
                timeout=timedelta(seconds=dist_timeout_s),
            )
            _CONTEXT = WorkerContext(self._rank, int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), dev)
            for name, cls in roles.items():
                self._roles[name] = _CONTEXT.roles[name] = cls(**init_kwargs.get(name, {}))
        except _PASS_THROUGH:
            raise
        except BaseException as exc:
            return self._failure(exc)
        return None

    def execute(self, role: str, method: str, payload: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        """Run ``role.method(*args, **kwargs)``; results go to the CPU, exceptions become RemoteFailure."""
        try:
            fn = getattr(self._roles[role], method)
            if getattr(fn, DISPATCH_ATTR, None) is None:
                raise AttributeError(f"{role}.{method} is not decorated with @dispatch")
            args, kwargs = payload
            if hw.device_type() != "cpu":
                # Ray runs calls on pool threads; the current device is per thread.
                hw.set_device(worker_context().device)
            # a named range per call, so Nsight and torch-profiler traces show which call ran what
            with trace_range(f"{role}.{method}"):
                result = fn(*args, **kwargs)
            return _to_cpu(result)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # torch's CheckpointException is a BaseException
            return self._failure(exc)

    def probe(self, role: str, method: str) -> Any:
        """``role.method()`` of a :func:`~rlkit.controller.dispatch.probe` method, on a spare thread.

        None if the role is not built yet or the probe raised: a probe reads gauges for a
        dashboard, and must never fail the run that it watches.
        """
        fn = getattr(self._roles.get(role), method, None)
        if fn is None or not getattr(fn, PROBE_ATTR, False):
            return None
        try:
            return _to_cpu(fn())
        except Exception:
            return None

    def dump_stacks(self) -> str:
        """The Python stack of every thread of this process except the one running this method."""
        names = {t.ident: t.name for t in threading.enumerate()}
        parts = [f"rank {self._rank} (pid {os.getpid()}):"]
        for ident, frame in sys._current_frames().items():
            if ident != threading.get_ident():
                stack = "".join(traceback.format_stack(frame))
                parts.append(f"  thread {names.get(ident, ident)}:\n{stack}")
        return "\n".join(parts)

    def _failure(self, exc: BaseException) -> RemoteFailure:
        # Start at the role code: this host's own frame (execute/setup) says nothing to the user.
        frames = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        tb = "".join(traceback.format_exception(type(exc), exc, frames or exc.__traceback__))
        user = exc if isinstance(exc, UserError) else None
        return RemoteFailure(
            self._rank,
            type(exc).__name__,
            str(exc),
            tb,
            cause=describe(exc),
            user_message=user.message if user else None,
            user_hint=user.hint if user else None,
        )


def cpu_threads(local_world_size: int) -> int:
    """Compute threads of a CPU worker: the driver's ``OMP_NUM_THREADS`` when the user set it, else
    this node's usable cores shared by its workers.

    Ray starts an actor that asks for one CPU with ``OMP_NUM_THREADS=1``, which leaves a 2-core
    machine's second core idle during the update; a CPU pool's workers are the only heavy compute
    on their node, so they split its cores instead.
    """
    if given := os.environ.get(CPU_THREADS_ENV):
        return max(1, int(given))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))


def driver_identity() -> dict[str, Any]:
    """What a worker needs to watch the calling (driver) process: host name, pid, start time."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "create_time": psutil.Process().create_time()}


def watch_driver(driver: dict[str, Any], interval_s: float = _WATCH_INTERVAL_S) -> threading.Thread | None:
    """Exit this process (``os._exit``) within ``interval_s`` of the driver's death.

    Only watches a driver on this host (a pid means nothing on another node; there Ray's owner
    check ends the actor). A pid reused by another process counts as dead (its start time differs).

    Returns:
        The daemon thread, or None when the driver runs on another host.
    """
    if driver.get("host") != socket.gethostname():
        return None
    args = (int(driver["pid"]), float(driver["create_time"]), interval_s)
    thread = threading.Thread(target=_watch, args=args, name="rlkit-driver-watchdog", daemon=True)
    thread.start()
    return thread


def _watch(pid: int, create_time: float, interval_s: float) -> None:
    import psutil

    from rlkit.controller.reaper import alive

    try:
        driver = psutil.Process(pid)
    except psutil.Error:
        os._exit(1)
    while alive(driver, create_time):
        time.sleep(interval_s)
    os._exit(1)


def _pin_visible_devices(device: str) -> None:
    """Make this process see exactly the devices Ray gave it, under every variable the device honours.

    Must run before the first device call of the process. On ROCm the first variable
    (HIP_VISIBLE_DEVICES) carries the ids and ROCR_VISIBLE_DEVICES is cleared, so the two cannot
    filter twice.
    """
    names = hw.visible_devices_env(device)
    resource = hw.ray_resource_name(device)
    if not names or resource is None:
        return
    ids = ray.get_runtime_context().get_accelerator_ids().get(resource, [])
    os.environ[names[0]] = ",".join(str(i) for i in ids)
    for name in names[1:]:
        os.environ.pop(name, None)


def _to_cpu(value: Any) -> Any:
    """``value`` with every tensor (also inside batches, dicts, lists and tuples) on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Batch):
        return value.to("cpu")
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    if type(value) is tuple:
        return tuple(_to_cpu(v) for v in value)
    return value
