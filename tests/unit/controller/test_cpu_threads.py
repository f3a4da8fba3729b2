"""CPU workers split the node's cores unless the user set OMP_NUM_THREADS (Ray would force one)."""

from __future__ import annotations

import os

import pytest

from rlkit.controller.worker import CPU_THREADS_ENV, cpu_threads


def test_workers_split_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CPU_THREADS_ENV, raising=False)
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(1) == cores
    assert cpu_threads(2) == max(1, cores // 2)
    assert cpu_threads(cores * 4) == 1  # never zero


def test_the_users_thread_count_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_THREADS_ENV, "3")
    assert cpu_threads(1) == 3
    assert cpu_threads(8) == 3
