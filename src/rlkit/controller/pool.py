"""Starting or joining Ray, and reserving devices for worker groups (placement groups).

A :class:`ResourcePool` is one Ray placement group with one bundle per node, holding that node's
device slots (``{"CPU": d, "GPU": d}``, ``{"CPU": d, "NPU": d}``, or ``{"CPU": d}`` for CPU
slots), spread strictly: every bundle on a different node, so ``hardware.nodes=2`` really uses
two nodes even when one of them could hold every slot. :meth:`ResourcePool.split` cuts a pool into sub-pools for split placement
(a worker group per role); the placement groups are removed when the last worker group on them
shuts down.

Joining a cluster checks first that its address answers (a TCP connect under
``hardware.ray_connect_timeout_s``), so a wrong address fails in seconds with one line instead of
Ray retrying for minutes. A local Ray started here is stopped on exit under a time bound
(:func:`stop_ray`), and a detached reaper (:mod:`rlkit.controller.reaper`) kills its processes
if the driver dies without stopping it (``kill -9``).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants, services
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from rlkit.errors import UserError
from rlkit.hardware import device as hw

DEVICES = ("cuda", "rocm", "npu", "cpu")
# How long a pool the cluster can never hold waits for nodes that are still joining.
_NEVER_FITS_WAIT_S = 5.0
# How long ray.shutdown() may take before the driver moves on (the reaper finishes the job).
_SHUTDOWN_TIMEOUT_S = 10.0
_REAPER: subprocess.Popen[bytes] | None = None
_CONNECT_HINT = "check the address (`ray status` on the head node), or leave hardware.ray_address unset to start a local Ray"


def start_ray(
    address: str | None = None, num_cpus: int | None = None, connect_timeout_s: float = 10.0
) -> None:
    """Join the Ray cluster at ``address`` (or ``$RAY_ADDRESS``), else start a local one.

    A local Ray listens on 127.0.0.1 only, with no dashboard and warnings-only logs. Does nothing
    when Ray is already initialised in this process. Workers get the driver's extra import paths
    (``PYTHONPATH`` plus ``sys.path`` entries outside the Python installation), so classes defined
    in scripts or test modules can be unpickled there.

    Args:
        address: ``host:port`` or ``auto`` of a running cluster; None starts a local Ray unless
            ``RAY_ADDRESS`` is set.
        num_cpus: CPUs a local Ray advertises (default: all); ignored when joining a cluster.
        connect_timeout_s: How long the cluster's address gets to answer a TCP connect.

    Raises:
        UserError: The address is malformed, does not resolve, or nothing answers there in time
            (``auto``: no cluster runs on this machine).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    pythonpath = _driver_pythonpath()
    if address is not None:
        check_ray_address(address, connect_timeout_s)
        runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}} if pythonpath else None
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        return
    # A local Ray's processes inherit this environment: cheaper than a runtime_env, which stops
    # Ray from reusing its pre-started workers (seconds per actor on a small box).
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    # Token auth off and the loopback address for every Ray process; this kept Ray on 127.0.0.1
    # on sandboxed machines. A joined cluster keeps its own settings.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray read that variable when it was imported; refresh its copy so this driver uses the loopback too.
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].lower() in (
        "1",
        "true",
    )
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    _start_reaper()


def check_ray_address(address: str, timeout_s: float) -> None:
    """Fail in about ``timeout_s`` with one line unless a Ray cluster's address answers at ``address``.

    Raises:
        UserError: Malformed address, no cluster for ``auto``, unresolvable host, nothing listening.
    """
    key = f"hardware.ray_address={address}"
    try:
        target = services.canonicalize_bootstrap_address(address)
    except ConnectionError:
        raise UserError(
            f"{key}: no running Ray cluster found on this machine",
            hint="start one with `ray start --head`, or leave hardware.ray_address unset to start a local Ray",
        ) from None
    except ValueError:
        raise UserError(
            f"{key} is not host:port", hint="write it as HOST:PORT (e.g. 10.0.0.1:6379) or auto"
        ) from None
    if target is None:  # "local": ray.init starts one
        return
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        raise UserError(f"{key} is not host:port", hint="write it as HOST:PORT (e.g. 10.0.0.1:6379) or auto")
    try:
        infos = _resolve(host, int(port), timeout_s)
    except OSError:
        raise UserError(f"{key}: cannot resolve the host {host!r}", hint=_CONNECT_HINT) from None
    try:
        family, kind, proto, _, sockaddr = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout_s)
            sock.connect(sockaddr)
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc)).lower()
        raise UserError(
            f"{key}: nothing answers there ({why} at {host}:{port}, hardware.ray_connect_timeout_s={timeout_s:g})",
            hint=_CONNECT_HINT,
        ) from None


def _resolve(host: str, port: int, timeout_s: float) -> list[Any]:
    """``socket.getaddrinfo`` under a deadline (a DNS lookup can hang far longer than a connect).

    Raises:
        OSError: The name does not resolve, or not within ``timeout_s``.
    """
    out: list[Any] = []

    def lookup() -> None:
        try:
            out.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError:
            pass

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not out:
        raise OSError(f"cannot resolve {host!r}")
    return out


def stop_ray(timeout_s: float = _SHUTDOWN_TIMEOUT_S) -> None:
    """``ray.shutdown()``, waiting at most ``timeout_s`` (the reaper kills what is left when we exit)."""
    if not ray.is_initialized():
        return
    thread = threading.Thread(target=ray.shutdown, name="rlkit-ray-shutdown", daemon=True)
    thread.start()
    thread.join(timeout_s)


def _start_reaper() -> None:
    """Start the detached process that kills this driver's local Ray processes once the driver is gone."""
    import psutil

    global _REAPER
    me = psutil.Process()
    script = Path(__file__).with_name("reaper.py")  # run as a script: it must not import torch or Ray
    cmd = [sys.executable, "-I", str(script), str(me.pid), repr(me.create_time())]
    _REAPER = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the driver's terminal does not reach it
        close_fds=True,
    )


def _driver_pythonpath() -> str:
    """``PYTHONPATH`` entries and ``sys.path`` directories that are not part of the Python install."""
    install = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        if path.is_dir() and not any(path.is_relative_to(root) for root in install):
            paths.append(str(path))
    return os.pathsep.join(dict.fromkeys(paths))


class ResourcePool:
    """Device slots reserved on the Ray cluster: ``nodes`` x ``devices_per_node`` of ``device``.

    Slots are in rank order: node 0's slots first. Creating a pool only asks Ray; :meth:`wait`
    (called by the first worker group) blocks until the slots are placed, or fails clearly.

    Args:
        nodes: Nodes to spread over (one placement group each).
        devices_per_node: Slots per node (devices, or worker processes on CPU).
        device: ``"cuda"``, ``"rocm"``, ``"npu"`` or ``"cpu"``.

    Raises:
        UserError: On an unknown device or a count below 1.
    """

    def __init__(self, nodes: int, devices_per_node: int, device: str) -> None:
        if device not in DEVICES:
            raise UserError(f"unknown device {device!r}", hint=f"use one of {', '.join(DEVICES)}")
        if nodes < 1 or devices_per_node < 1:
            raise UserError(
                f"a pool needs at least 1 node and 1 device per node, got {nodes} x {devices_per_node}"
            )
        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised: call rlkit.controller.start_ray() first")
        self.nodes, self.devices_per_node, self.device = nodes, devices_per_node, device
        self.resource = hw.ray_resource_name(device)
        per_node = float(devices_per_node)
        bundle = {"CPU": per_node, **({self.resource: per_node} if self.resource else {})}
        pg = placement_group([dict(bundle) for _ in range(nodes)], strategy="STRICT_SPREAD")
        self._pgs: list[PlacementGroup] = [pg]
        # (placement group, bundle index): a worker takes one device of its node's bundle.
        self.slots: list[tuple[PlacementGroup, int]] = [
            (pg, node) for node in range(nodes) for _ in range(devices_per_node)
        ]
        self._root = self
        self._ready = False
        self._users = 0
        self._closed = False

    @property
    def world_size(self) -> int:
        """Number of slots (ranks of a worker group on this pool)."""
        return len(self.slots)

    def wait(self, timeout_s: float = 120.0) -> None:
        """Block until Ray has placed every slot.

        When the cluster as it is now could never hold the pool (fewer nodes than asked with enough
        devices each), waits at most a few seconds, for nodes that are still joining, instead of
        the whole ``timeout_s``.

        Raises:
            UserError: If the slots are not placed in time (the cluster is too small); the
                reservation is released first.
        """
        root = self._root
        if root._closed:
            raise RuntimeError("this resource pool was shut down; create a new one")
        if root._ready:
            return
        if not root._cluster_can_hold():
            timeout_s = min(timeout_s, _NEVER_FITS_WAIT_S)
        ready, _ = ray.wait([pg.ready() for pg in root._pgs], num_returns=len(root._pgs), timeout=timeout_s)
        if len(ready) < len(root._pgs):
            root.shutdown()
            raise UserError(
                root._shortage_message(),
                hint="pick a smaller --profile or --nodes, or add nodes to the cluster (`ray status` lists them)",
            )
        root._ready = True

    def _per_node(self) -> dict[str, float]:
        """Live node id -> how many of this pool's resource it has (what Ray reports now)."""
        name = self.resource or "CPU"
        nodes = ray.nodes()  # type: ignore[no-untyped-call]
        return {n["NodeID"]: float(n["Resources"].get(name, 0.0)) for n in nodes if n.get("Alive")}

    def _cluster_can_hold(self) -> bool:
        roomy = [count for count in self._per_node().values() if count >= self.devices_per_node]
        return len(roomy) >= self.nodes

    def _shortage_message(self) -> str:
        """``asked for 2 nodes x 1 CPU, Ray reports 1 live node: 5f3a9c 4 CPU`` (node ids shortened)."""
        name = self.resource or "CPU"
        per_node = self._per_node()
        asked = f"{self.nodes} node{'s' if self.nodes > 1 else ''} x {self.devices_per_node} {name}"
        seen = ", ".join(f"{node[:6]} {count:g} {name}" for node, count in per_node.items()) or "none"
        message = f"asked for {asked}, Ray reports {len(per_node)} live node{'s' if len(per_node) != 1 else ''}: {seen}"
        if self._cluster_can_hold():
            message += " (enough, but held by other work)"
        return message

    def split(self, sizes: Sequence[int]) -> list[ResourcePool]:
        """Cut the slots into consecutive sub-pools of ``sizes`` (for a worker group per role).

        The sub-pools share this pool's placement groups, which stay until the last worker group
        on any of them shuts down.
        """
        if sum(sizes) != self.world_size or any(s < 1 for s in sizes):
            raise ValueError(f"split sizes {list(sizes)} must be positive and sum to {self.world_size}")
        parts, start = [], 0
        for size in sizes:
            sub = object.__new__(ResourcePool)
            sub.nodes, sub.devices_per_node, sub.device = self.nodes, self.devices_per_node, self.device
            sub.resource, sub._pgs, sub._root = self.resource, [], self._root
            sub.slots = self.slots[start : start + size]
            parts.append(sub)
            start += size
        return parts

    def acquire(self) -> None:
        """Record that a worker group now runs on this pool (see :meth:`release`)."""
        self.wait()
        self._root._users += 1

    def release(self) -> None:
        """A worker group on this pool shut down; the last one removes the placement groups."""
        root = self._root
        root._users -= 1
        if root._users <= 0:
            root.shutdown()

    def shutdown(self) -> None:
        """Remove the placement groups of the whole pool (idempotent)."""
        root = self._root
        if root._closed:
            return
        root._closed = True
        for pg in root._pgs:
            try:
                remove_placement_group(pg)
            except Exception:  # Ray already gone (shutdown at exit): nothing left to free
                pass
