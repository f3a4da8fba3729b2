"""A worker group: one Ray actor per slot of a pool, hosting every given role (colocation).

The controller (the Ray driver) calls role methods on all ranks at once::

    group = WorkerGroup(pool, {"actor": ActorRole, "ref": RefRole}, {"actor": {"lr": 1e-6}})
    batch = group.role("actor").compute_log_prob(batch)     # mode from @dispatch on the method
    group.call("ref", "compute_ref_log_prob", batch)         # the same, by name

A call never hangs silently: the first rank that raises, dies or misses the deadline ends the
call with one :class:`~rlkit.controller.worker.WorkerError` whose text is one line (where, and the
root cause); a UserError raised in role code arrives as a
:class:`~rlkit.controller.worker.WorkerUserError` that reads as that UserError. After a worker
died, a deadline passed, or a failing call left other ranks running, the group is broken and
refuses further calls; shut it down.

The driver waits on workers in short slices, so a signal (Ctrl-C, SIGTERM) is handled within a
fraction of a second even while a call runs.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import Counter
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlkit.controller.causes import first_line
from rlkit.controller.dispatch import collect, dispatch_mode, is_probe, shard_payloads
from rlkit.controller.pool import ResourcePool
from rlkit.controller.worker import (
    CPU_THREADS_ENV,
    RemoteFailure,
    WorkerError,
    WorkerHost,
    WorkerUserError,
    driver_identity,
)
from rlkit.hardware import device as hw

logger = logging.getLogger(__name__)

# How long the other ranks get to finish after one rank failed, before the group counts as broken.
_FAILURE_GRACE_S = 2.0
# How long every rank gets to answer dump_stacks() after a deadline (at most; a short deadline
# gets as long as itself, at least 2 s).
_STACK_DUMP_TIMEOUT_S = 10.0
# The longest the driver blocks in one ray.wait, so signal handlers run in between.
_WAIT_SLICE_S = 0.5
# How long a probe waits for the ranks' answers (a Prometheus scrape waits meanwhile).
PROBE_TIMEOUT_S = 1.0
# The config keys named when a deadline passes.
STAGE_KEY = "hardware.stage_timeout_s"
START_KEY = "hardware.worker_start_timeout_s"


class WorkerGroup:
    """Ray actors on every slot of ``pool``, each building all of ``roles`` and joining one process group.

    Args:
        pool: The slots to run on (a whole pool or a part from :meth:`ResourcePool.split`).
        roles: Role name -> class; every actor builds ``cls(**init_kwargs[name])`` in this order.
        init_kwargs: Constructor keyword arguments per role (missing roles get none).
        call_timeout_s: Default deadline of a call (``hardware.stage_timeout_s``).
        dist_timeout_s: Timeout of ``torch.distributed`` collectives, so none waits forever.
        start_timeout_s: Deadline of start-up: workers placed, roles built
            (``hardware.worker_start_timeout_s``; default ``call_timeout_s``).

    Raises:
        WorkerError: If a worker fails to start or a role constructor raises (the actors are
            killed and the pool released first).
    """

    def __init__(
        self,
        pool: ResourcePool,
        roles: dict[str, type],
        init_kwargs: dict[str, dict[str, Any]] | None = None,
        *,
        call_timeout_s: float = 1800.0,
        dist_timeout_s: float = 600.0,
        start_timeout_s: float | None = None,
    ) -> None:
        init_kwargs = init_kwargs or {}
        if not roles:
            raise ValueError("a worker group needs at least one role")
        if unknown := set(init_kwargs) - set(roles):
            raise ValueError(f"init_kwargs for unknown roles {sorted(unknown)}; roles are {list(roles)}")
        self.roles = dict(roles)
        self.world_size = pool.world_size
        self.device = pool.device
        self.call_timeout_s = call_timeout_s
        self.start_timeout_s = call_timeout_s if start_timeout_s is None else start_timeout_s
        self._pool = pool
        self._broken: str | None = None
        pool.acquire()
        resource = hw.ray_resource_name(pool.device)
        host = ray.remote(WorkerHost)
        self._actors: list[Any] = [
            host.options(
                num_cpus=1,
                num_gpus=1 if resource == "GPU" else 0,
                resources={resource: 1} if resource not in (None, "GPU") else None,
                # a call, a weight push into it (partial rollouts), dump_stacks while it hangs, a probe
                max_concurrency=4,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
            ).remote()
            for pg, i in pool.slots
        ]
        try:
            self._start(init_kwargs, dist_timeout_s)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, init_kwargs: dict[str, dict[str, Any]], dist_timeout_s: float) -> None:
        timeout, key = self.start_timeout_s, START_KEY
        infos = self._gather(
            [a.node_info.remote() for a in self._actors], "worker", "node_info", timeout, key
        )
        self.node_ips: list[str] = [info["ip"] for info in infos]
        self.pids: list[int] = [info["pid"] for info in infos]
        # Local ranks count per Ray node, not per address: nodes may share one (a loopback cluster).
        self.node_ids: list[str] = [info["node_id"] for info in infos]
        per_node = Counter(self.node_ids)
        seen: Counter[str] = Counter()
        refs = []
        driver = driver_identity()
        for rank, (actor, node) in enumerate(zip(self._actors, self.node_ids, strict=True)):
            env = {
                "RANK": str(rank),
                "WORLD_SIZE": str(self.world_size),
                "LOCAL_RANK": str(seen[node]),
                "LOCAL_WORLD_SIZE": str(per_node[node]),
                "MASTER_ADDR": infos[0]["ip"],
                "MASTER_PORT": str(infos[0]["port"]),
            }
            if threads := os.environ.get("OMP_NUM_THREADS"):  # the user's choice; Ray would force 1
                env[CPU_THREADS_ENV] = threads
            seen[node] += 1
            refs.append(
                actor.setup.remote(env, self._pool.device, self.roles, init_kwargs, dist_timeout_s, driver)
            )
        self._gather(refs, "worker", "setup", timeout, key)

    def placement(self) -> str:
        """Which ranks run on which node: ``node 5f3a9c (10.0.0.1): ranks 0-7; node 81be04 (...): ranks 8-15``."""
        parts = []
        for node in dict.fromkeys(self.node_ids):
            ranks = [r for r, n in enumerate(self.node_ids) if n == node]
            span = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
            parts.append(f"node {node[:6]} ({self.node_ips[ranks[0]]}): {span}")
        return "; ".join(parts)

    # ----------------------------------------------------------------- calls

    def role(self, name: str, timeout_s: float | None = None, timeout_key: str = STAGE_KEY) -> RoleHandle:
        """A handle whose attributes call ``name``'s decorated methods on every rank.

        ``timeout_s`` (default ``call_timeout_s``) is the deadline of each call, and
        ``timeout_key`` the config key a deadline message tells the user to raise.
        """
        if name not in self.roles:
            raise KeyError(f"no role {name!r} in this group; it has {list(self.roles)}")
        return RoleHandle(self, name, timeout_s, timeout_key)

    def call(
        self,
        role: str,
        method: str,
        *args: Any,
        timeout_s: float | None = None,
        timeout_key: str = STAGE_KEY,
        **kwargs: Any,
    ) -> Any:
        """Call ``role.method`` on every rank, dispatching the arguments by the method's declared mode.

        Args:
            role: Role name.
            method: Name of a method decorated with :func:`~rlkit.controller.dispatch.dispatch`.
            *args: Positional arguments of the method.
            timeout_s: Deadline of this call (default: ``call_timeout_s``); when it passes, every
                rank's Python stacks are logged and a WorkerError is raised.
            timeout_key: The config key the deadline message names.
            **kwargs: Keyword arguments of the method.

        Returns:
            The per-mode result (see :mod:`rlkit.controller.dispatch`).

        Raises:
            WorkerError: A rank raised, a worker died, or the deadline passed.
        """
        if role not in self.roles:
            raise KeyError(f"no role {role!r} in this group; it has {list(self.roles)}")
        mode = dispatch_mode(self.roles[role], method)
        if self._broken:
            raise WorkerError(
                f"{role}.{method}: the worker group is broken ({self._broken}); shut it down", role=role
            )
        pad = 0
        if mode == "shard":
            payloads, pad = shard_payloads(args, kwargs, self.world_size)
            refs = [a.execute.remote(role, method, p) for a, p in zip(self._actors, payloads, strict=True)]
        else:
            shared = ray.put((args, kwargs))  # serialised once, read by every rank
            refs = [a.execute.remote(role, method, shared) for a in self._actors]
        results = self._gather(refs, role, method, timeout_s, timeout_key)
        return collect(mode, results, pad)

    def probe(self, role: str, method: str, timeout_s: float = PROBE_TIMEOUT_S) -> list[Any]:
        """Every rank's answer to the :func:`~rlkit.controller.dispatch.probe` method ``role.method``,
        without waiting for the call the ranks may be running.

        A rank that does not answer within ``timeout_s`` (busy in native code, dead) or whose probe
        raised gives None; a probe never raises for a worker and never marks the group broken.

        Raises:
            AttributeError: ``role.method`` is not marked as a probe.
        """
        if not is_probe(self.roles[role], method):
            raise AttributeError(f"{role}.{method} is not a probe: mark it with @probe")
        actors = list(self._actors)
        if self._broken or not actors:
            return [None] * self.world_size
        refs = [actor.probe.remote(role, method) for actor in actors]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=timeout_s)[0])
        answers: list[Any] = []
        for ref in refs:
            try:
                answers.append(ray.get(ref) if ref in ready else None)
            except RayError:
                answers.append(None)
        return answers

    def _gather(
        self,
        refs: list[ray.ObjectRef[Any]],
        role: str,
        method: str,
        timeout_s: float | None,
        timeout_key: str = STAGE_KEY,
    ) -> list[Any]:
        """Results of ``refs`` in rank order, raising on the first failure instead of waiting for the rest.

        Waits in slices of at most ``_WAIT_SLICE_S``, so signal handlers of the driver run meanwhile.
        """
        timeout_s = self.call_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        pending = {ref: rank for rank, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._overran(role, method, timeout_s, timeout_key, sorted(pending.values()))
            ready = _wait(list(pending), 1, min(remaining, _WAIT_SLICE_S))
            for ref in ready:
                rank = pending.pop(ref)
                results[rank] = self._value(ref, rank, role, method)
                if isinstance(results[rank], RemoteFailure):
                    self._raise_failure(results[rank], pending, role, method)
        return results

    def _value(self, ref: ray.ObjectRef[Any], rank: int, role: str, method: str) -> Any:
        """One rank's result (a RemoteFailure if role code raised); a dead worker raises WorkerError."""
        where = f"{role}.{method} on rank {rank}"
        try:
            return ray.get(ref)
        except RayActorError as exc:
            self._broken, kind = f"rank {rank} died", type(exc).__name__
            message = (
                f"{where}: the worker process died (killed, out of memory or crashed): {_died_line(exc)}"
            )
        except RayError as exc:
            self._broken, kind = f"rank {rank} failed in Ray", type(exc).__name__
            message = f"{where}: Ray failed: {first_line(exc)}"
        raise WorkerError(message, role=role, method=method, rank=rank, exc_type=kind)

    def _raise_failure(
        self, failure: RemoteFailure, pending: dict[ray.ObjectRef[Any], int], role: str, method: str
    ) -> None:
        """Raise the WorkerError for ``failure``, or for a rank that died, which is the likelier cause.

        A rank that dies makes its peers' collectives fail too, and their errors may arrive first;
        so the other ranks get a short grace period, and a death among them is reported instead.
        """
        others = list(pending)
        done = _wait(others, len(others), _FAILURE_GRACE_S) if others else []
        for ref in done:
            self._value(ref, pending[ref], role, method)  # raises for a dead rank
        where = f"{role}.{method} on rank {failure.rank}"
        if len(done) < len(others):
            self._broken = f"{where} raised while other ranks were still running"
        context: dict[str, Any] = {
            "role": role,
            "method": method,
            "rank": failure.rank,
            "exc_type": failure.exc_type,
            "remote_traceback": failure.traceback,
        }
        if failure.user_message is not None:
            raise WorkerUserError(failure.user_message, failure.user_hint, **context)
        cause = failure.cause or f"{failure.exc_type}: {failure.message}"
        raise WorkerError(f"{where}: {cause}", **context)

    def _overran(self, role: str, method: str, timeout_s: float, key: str, stalled: list[int]) -> None:
        """Log every rank's Python stacks and raise: a call ran past its deadline."""
        self._broken = f"{role}.{method} overran its deadline"
        stacks, silent = self._stacks(min(_STACK_DUMP_TIMEOUT_S, max(2.0, timeout_s)))
        logger.error(
            "%s.%s overran its %g s deadline; Python stacks of every rank:\n%s",
            role,
            method,
            timeout_s,
            stacks,
        )
        ranks = ", ".join(str(r) for r in stalled)
        frozen = f"; rank {', '.join(map(str, silent))} did not answer (stopped or stuck in native code)"
        what = f"the workers' start-up ({method})" if role == "worker" else f"stage {role}.{method}"
        raise WorkerError(
            f"{what} overran its {timeout_s:g} s deadline on rank {ranks}"
            f"{frozen if silent else ''}: raise {key} if it is only slow",
            role=role,
            method=method,
            rank=stalled[0] if len(stalled) == 1 else None,
            stacks=stacks,
        )

    def dump_stacks(self, timeout_s: float = _STACK_DUMP_TIMEOUT_S) -> str:
        """Every rank's Python stacks, for a stall seen outside a call of this group (between two groups)."""
        return self._stacks(timeout_s)[0]

    def _stacks(self, timeout_s: float) -> tuple[str, list[int]]:
        """Every rank's stacks as one text, and the ranks that did not answer within ``timeout_s``."""
        refs = [a.dump_stacks.remote() for a in self._actors]
        ready = set(_wait(refs, len(refs), timeout_s))
        dumps = []
        for rank, ref in enumerate(refs):
            try:
                dumps.append(
                    ray.get(ref) if ref in ready else f"rank {rank}: no answer (hung in native code?)"
                )
            except RayError as exc:
                dumps.append(f"rank {rank}: could not dump stacks: {first_line(exc)}")
        return "\n".join(dumps), [r for r, ref in enumerate(refs) if ref not in ready]

    # -------------------------------------------------------------- lifecycle

    def shutdown(self) -> None:
        """Kill the actors and release the pool (the last group on a pool removes its placement groups)."""
        actors, self._actors = getattr(self, "_actors", []), []
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already dead, or Ray shut down first
                pass
        if actors:
            self._broken = "shut down"
            self._pool.release()

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class RoleHandle:
    """``group.role("actor").compute_log_prob(batch)``: attribute access = :meth:`WorkerGroup.call`."""

    def __init__(self, group: WorkerGroup, role: str, timeout_s: float | None, timeout_key: str) -> None:
        self._group, self._role, self._timeout_s, self._key = group, role, timeout_s, timeout_key

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        dispatch_mode(self._group.roles[self._role], method)  # fail here, not at call time
        call = self._group.call
        return functools.partial(call, self._role, method, timeout_s=self._timeout_s, timeout_key=self._key)


def _wait(refs: list[ray.ObjectRef[Any]], num_returns: int, timeout_s: float) -> list[ray.ObjectRef[Any]]:
    """``ray.wait`` in slices of ``_WAIT_SLICE_S``: the refs ready within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        ready = ray.wait(refs, num_returns=num_returns, timeout=max(0.0, min(remaining, _WAIT_SLICE_S)))[0]
        if len(ready) >= num_returns or remaining <= _WAIT_SLICE_S:
            return list(ready)


def _died_line(exc: RayActorError) -> str:
    """Why Ray says the actor died, in one line (its text repeats the actor's whole description)."""
    text = str(exc)
    for marker in ("The actor died", "The actor is dead", "Worker exit type", "killed"):
        at = text.find(marker)
        if at >= 0:
            return text[at:].splitlines()[0].strip()
    return first_line(exc)
