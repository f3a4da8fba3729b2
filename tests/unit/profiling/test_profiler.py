"""Profiler mechanics in one process: torch traces across threads, windows, step ranges, preflight, nsys."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from rlkit.errors import UserError
from rlkit.hardware import capture
from rlkit.hardware import device as hw
from rlkit.profiling import launch
from rlkit.profiling.nvtx import nvtx_range, trace_range
from rlkit.profiling.profiler import KINDS, ProfilerRole, ProfileWindow, WorkerProfiler, parse_steps

on_cpu = pytest.mark.skipif(hw.device_type() != "cpu", reason="checks the CPU behaviour")


def _names(trace: str) -> set[str]:
    return {e.get("name", "") for e in json.loads(Path(trace).read_text())["traceEvents"]}


def _in_thread(fn: object) -> None:
    t = threading.Thread(target=fn)  # type: ignore[arg-type]
    t.start()
    t.join()


def test_torch_trace_records_work_of_other_threads(tmp_path: Path) -> None:
    # Ray runs an actor's calls on pool threads: start, work and stop may each run on another.
    prof = WorkerProfiler()
    _in_thread(lambda: prof.start(tmp_path / "profile", "torch", rank=1, tag="_steps2-3"))
    assert prof.active

    def work() -> None:
        with trace_range("actor.update"):
            torch.mm(torch.randn(32, 32), torch.randn(32, 32))

    _in_thread(work)
    written: list[str] = []
    _in_thread(lambda: written.extend(prof.stop()))
    assert written == [str(tmp_path / "profile" / "torch_rank1_steps2-3.pt.trace.json")]
    names = _names(written[0])
    assert "actor.update" in names and "aten::mm" in names
    assert not prof.active and prof.stop() == []


def test_start_twice_and_unknown_kind_are_bugs(tmp_path: Path) -> None:
    prof = WorkerProfiler()
    with pytest.raises(ValueError, match="unknown profiler kind"):
        prof.start(tmp_path, "perf")
    prof.start(tmp_path, "torch")
    with pytest.raises(ValueError, match="already running"):
        prof.start(tmp_path, "torch")
    prof.stop()


@on_cpu
def test_memory_snapshots_need_a_device(tmp_path: Path) -> None:
    assert not capture.memory_snapshots_supported()
    with pytest.raises(RuntimeError, match="memory snapshots need a CUDA, ROCm or NPU device"):
        WorkerProfiler().start(tmp_path, "memory")


@on_cpu
def test_nsight_range_and_nvtx_are_no_ops_on_cpu(tmp_path: Path) -> None:
    prof = WorkerProfiler()
    prof.start(tmp_path, "nsight")
    with nvtx_range("stage"), trace_range("role.method"):
        pass
    assert prof.stop() == []


@on_cpu
def test_npu_profiler_without_torch_npu(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="torch_npu"):
        WorkerProfiler().start(tmp_path, "npu")


def test_profiler_role_methods_are_broadcast() -> None:
    assert ProfilerRole.start.__rlkit_dispatch__ == "broadcast"  # type: ignore[attr-defined]
    assert ProfilerRole.stop.__rlkit_dispatch__ == "broadcast"  # type: ignore[attr-defined]


def test_window() -> None:
    off = ProfileWindow.from_settings("none", [2, 3], 10)
    assert not off.enabled and not off.starts_at(2) and not off.stops_at(3)
    win = ProfileWindow.from_settings("torch", [2, 3], 10)
    assert [s for s in range(1, 11) if win.starts_at(s)] == [2]
    assert [s for s in range(1, 11) if win.stops_at(s)] == [3]
    assert win.tag == "_steps2-3"
    clamped = ProfileWindow.from_settings("memory", [2, 50], 4)
    assert (clamped.first, clamped.last) == (2, 4)


@pytest.mark.parametrize(("steps", "total"), [([3, 2], 10), ([0, 1], 10), ([1], 10), ([5, 6], 4)])
def test_bad_windows_are_user_errors(steps: list[int], total: int) -> None:
    with pytest.raises(UserError, match="profile_steps"):
        ProfileWindow.from_settings("torch", steps, total)
    with pytest.raises(UserError, match="trainer.profile="):
        ProfileWindow.from_settings("perf", [1, 2], 10)


def test_parse_steps() -> None:
    assert parse_steps("2-3") == (2, 3)
    assert parse_steps(" 4 ") == (4, 4)
    for bad in ("3-2", "0-1", "a-b", "1-2-3", ""):
        with pytest.raises(UserError, match="--steps"):
            parse_steps(bad)


def test_nsys_command_traces_the_profiler_api_range() -> None:
    cmd = launch.nsys_command(
        "/opt/nsys", Path("run/profile/nsight"), ["python", "-m", "rlkit", "train", "grpo"]
    )
    assert cmd[:2] == ["/opt/nsys", "profile"]
    assert "--capture-range=cudaProfilerApi" in cmd and "--output=run/profile/nsight" in cmd
    assert cmd[-5:] == ["python", "-m", "rlkit", "train", "grpo"]


def test_missing_nsys_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="`nsys` is not on PATH"):
        launch.preflight("nsight")


@on_cpu
def test_preflight_on_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    launch.preflight("torch")
    with pytest.raises(UserError, match="--memory records GPU/NPU allocations"):
        launch.preflight("memory")
    launch.preflight("memory", joining_cluster=True)  # the cluster's workers may have GPUs
    with pytest.raises(UserError, match="torch_npu"):
        launch.preflight("npu")
    fake = tmp_path / "nsys"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="--nsight traces CUDA GPUs"):
        launch.preflight("nsight")
    with pytest.raises(UserError, match="cannot trace a joined Ray cluster"):
        launch.preflight("nsight", joining_cluster=True)


def test_kinds() -> None:
    assert set(KINDS) == {"torch", "npu", "memory", "nsight"}
