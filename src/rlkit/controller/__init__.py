"""Ray single controller: resource pools, worker groups of colocated roles, dispatch, failure reports."""

from __future__ import annotations

from rlkit.controller.dispatch import DispatchMode, dispatch, probe, reduce_metrics
from rlkit.controller.group import RoleHandle, WorkerGroup
from rlkit.controller.pool import ResourcePool, start_ray, stop_ray
from rlkit.controller.worker import WorkerContext, WorkerError, WorkerUserError, worker_context

__all__ = [
    "DispatchMode",
    "ResourcePool",
    "RoleHandle",
    "WorkerContext",
    "WorkerError",
    "WorkerGroup",
    "WorkerUserError",
    "dispatch",
    "probe",
    "reduce_metrics",
    "start_ray",
    "stop_ray",
    "worker_context",
]
