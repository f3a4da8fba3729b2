"""Device-side hooks of the profilers: CUDA profiler-API range, memory snapshots, NVTX, the NPU profiler.

``rlkit.profiling`` calls these instead of ``torch.cuda``/``torch.npu`` so that it stays
device-neutral. Each is a no-op (or reports "unsupported") where the device has no such
facility, except the memory snapshots, which raise: a snapshot that silently records nothing
would mislead.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from rlkit.hardware.device import _accel, device_type


def profiler_range_start() -> None:
    """Open the capture range of ``nsys profile --capture-range=cudaProfilerApi`` (no-op off CUDA/ROCm)."""
    if device_type() in ("cuda", "rocm"):
        torch.cuda.profiler.start()  # type: ignore[no-untyped-call]


def profiler_range_stop() -> None:
    """Close the range opened by :func:`profiler_range_start` (no-op off CUDA/ROCm)."""
    if device_type() in ("cuda", "rocm"):
        torch.cuda.profiler.stop()  # type: ignore[no-untyped-call]


def _memory_module() -> Any:
    accel = _accel()
    memory = getattr(accel, "memory", None) if accel is not None else None
    if memory is None or not hasattr(memory, "_record_memory_history"):
        return None
    return memory


def memory_snapshots_supported() -> bool:
    """Whether this process's device records allocation history (CUDA, ROCm, recent torch_npu)."""
    return _memory_module() is not None


def record_memory_history(enabled: bool, max_entries: int = 100_000) -> None:
    """Start (or stop and discard) recording every device allocation with its Python stack.

    Args:
        enabled: True starts recording, False stops it.
        max_entries: Most allocation events kept (older ones are dropped first).

    Raises:
        RuntimeError: If the device cannot record allocations (e.g. the CPU).
    """
    memory = _memory_module()
    if memory is None:
        raise RuntimeError(
            f"memory snapshots need a CUDA, ROCm or NPU device; this process runs on {device_type()}"
        )
    memory._record_memory_history("all" if enabled else None, max_entries=max_entries)


def dump_memory_snapshot(path: str | Path) -> None:
    """Write the recorded allocation history as a pickle for https://pytorch.org/memory_viz.

    Raises:
        RuntimeError: If the device cannot record allocations.
    """
    memory = _memory_module()
    if memory is None:
        raise RuntimeError(
            f"memory snapshots need a CUDA, ROCm or NPU device; this process runs on {device_type()}"
        )
    memory._dump_snapshot(str(path))


def nvtx_supported() -> bool:
    """Whether torch's built-in NVTX markers reach a profiler here (CUDA and ROCm builds with a GPU)."""
    return device_type() in ("cuda", "rocm")


def nvtx_push(name: str) -> None:
    """Open a named range with torch's built-in NVTX bindings (no-op where :func:`nvtx_supported` is False)."""
    if nvtx_supported():
        torch.cuda.nvtx.range_push(name)  # type: ignore[no-untyped-call]


def nvtx_pop() -> None:
    """Close the innermost range opened by :func:`nvtx_push`."""
    if nvtx_supported():
        torch.cuda.nvtx.range_pop()  # type: ignore[no-untyped-call]


def npu_profiler(trace_dir: str | Path, worker_name: str) -> Any:
    """An unstarted torch_npu profiler (CPU + NPU activity) writing to ``trace_dir/`` when stopped.

    Raises:
        RuntimeError: torch_npu is not installed.
    """
    try:
        torch_npu: Any = importlib.import_module("torch_npu")
    except ImportError as exc:
        raise RuntimeError("the NPU profiler needs torch_npu (Ascend), which is not installed") from exc
    prof = torch_npu.profiler
    return prof.profile(
        activities=[prof.ProfilerActivity.CPU, prof.ProfilerActivity.NPU],
        on_trace_ready=prof.tensorboard_trace_handler(str(trace_dir), worker_name=worker_name),
        record_shapes=True,
        profile_memory=True,
        experimental_config=prof._ExperimentalConfig(profiler_level=prof.ProfilerLevel.Level1),
    )
