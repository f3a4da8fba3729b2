"""Shared fixtures of the whole test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Ray's workers inherit these; set them before anything imports Ray so every Ray process of the
# test session stays on the loopback address with token auth off and quiet logs.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_SCHEDULER_EVENTS", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test session (4 CPUs, so two 1-CPU workers fit on a 2-core box)."""
    import ray

    from rlkit.controller import start_ray

    started_here = not ray.is_initialized()
    start_ray(None, num_cpus=4)  # joins $RAY_ADDRESS instead when it is set
    yield
    if started_here:
        ray.shutdown()
