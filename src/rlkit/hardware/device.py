"""The one place that knows which accelerator this process runs on (CUDA, ROCm, Ascend NPU or CPU).

Everything else calls these functions instead of ``torch.cuda``/``torch.npu``, so a new backend
means editing this file only. On CPU the memory and synchronisation helpers are no-ops that
return zeros, so callers need no ``if cpu`` branches.

ROCm builds of torch expose AMD GPUs through the ``torch.cuda`` API (device name ``"cuda"``,
collective backend RCCL under the name ``"nccl"``); they differ only in the visible-device
variables. NPUs need the ``torch_npu`` package, which is imported only when it is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from types import ModuleType
from typing import Any, Literal

import torch

DeviceType = Literal["cuda", "rocm", "npu", "cpu"]


@cache
def _npu_module() -> ModuleType | None:
    """``torch.npu`` when ``torch_npu`` is installed and sees an NPU, else None."""
    if importlib.util.find_spec("torch_npu") is None:
        return None
    try:
        importlib.import_module("torch_npu")  # registers torch.npu as a side effect
    except Exception:  # a broken CANN install must not stop CPU/GPU runs
        return None
    npu = getattr(torch, "npu", None)
    return npu if npu is not None and npu.is_available() else None


@cache
def device_type() -> DeviceType:
    """The accelerator family of this process: ``"cuda"``, ``"rocm"``, ``"npu"`` or ``"cpu"``.

    Cached per process: the visible-device variables must be set before the first call.
    """
    if torch.cuda.is_available():
        return "rocm" if torch.version.hip is not None else "cuda"
    if _npu_module() is not None:
        return "npu"
    return "cpu"


def _accel() -> Any:
    """The torch device module (``torch.cuda`` or ``torch.npu``), or None on CPU."""
    kind = device_type()
    if kind == "npu":
        return _npu_module()
    return torch.cuda if kind in ("cuda", "rocm") else None


def torch_device_name(kind: str | None = None) -> str:
    """The torch device string of ``kind`` (default: this process's): ``"cuda"`` (also ROCm), ``"npu"``, ``"cpu"``."""
    kind = kind or device_type()
    return {"cuda": "cuda", "rocm": "cuda", "npu": "npu"}.get(kind, "cpu")


def device_count() -> int:
    """Accelerators this process can see (0 on CPU)."""
    accel = _accel()
    return int(accel.device_count()) if accel is not None else 0


def current_device(local_rank: int = 0) -> torch.device:
    """The device with index ``local_rank`` among those this process sees.

    A Ray worker of rlkit sees only its own device, so its index there is 0 whatever its
    ``LOCAL_RANK``; a ``torchrun`` process sees all devices of the node and passes ``LOCAL_RANK``.
    """
    if device_type() == "cpu":
        return torch.device("cpu")
    return torch.device(torch_device_name(), local_rank)


def device_name(index: int = 0) -> str:
    """Marketing name of visible device ``index`` (e.g. ``"NVIDIA H100 80GB HBM3"``); ``"cpu"`` on CPU."""
    accel = _accel()
    return str(accel.get_device_name(index)) if accel is not None else "cpu"


def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors (compute units) of an accelerator device; 0 on the CPU."""
    accel = _accel()
    if accel is None or device.type == "cpu":
        return 0
    return int(accel.get_device_properties(device).multi_processor_count)


def device_total_memory(index: int = 0) -> int:
    """Total bytes of memory of visible device ``index`` (0 on CPU).

    Read from the device properties, which needs no context on the device (unlike
    :func:`mem_get_info`), so the Ray driver can check a profile without holding device memory.
    """
    accel = _accel()
    return int(accel.get_device_properties(index).total_memory) if accel is not None else 0


def set_device(device: torch.device) -> None:
    """Make ``device`` the default device of the calling thread (no-op on CPU)."""
    accel = _accel()
    if accel is not None and device.type != "cpu":
        accel.set_device(device)


def dist_backend(kind: str | None = None) -> str:
    """The ``torch.distributed`` backend of ``kind`` (default: this process's device type).

    ``"nccl"`` on CUDA and ROCm (where the name means RCCL), ``"hccl"`` on NPU, ``"gloo"`` on CPU.
    """
    kind = kind or device_type()
    return {"cuda": "nccl", "rocm": "nccl", "npu": "hccl"}.get(kind, "gloo")


def visible_devices_env(kind: str | None = None) -> list[str]:
    """Environment variables that restrict which devices of ``kind`` a process sees ([] on CPU).

    ROCm has two: ``ROCR_VISIBLE_DEVICES`` filters first, then ``HIP_VISIBLE_DEVICES`` indexes
    into what is left.
    """
    kind = kind or device_type()
    return {
        "cuda": ["CUDA_VISIBLE_DEVICES"],
        "rocm": ["HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"],
        "npu": ["ASCEND_RT_VISIBLE_DEVICES"],
    }.get(kind, [])


def ray_resource_name(kind: str | None = None) -> str | None:
    """Ray's resource name for a device of ``kind`` (default: this process's): ``"GPU"``, ``"NPU"`` or None."""
    kind = kind or device_type()
    return {"cuda": "GPU", "rocm": "GPU", "npu": "NPU"}.get(kind)


def synchronize(device: torch.device | None = None) -> None:
    """Wait for all queued work of ``device`` (default: the current device) of this process (no-op on CPU)."""
    accel = _accel()
    if accel is not None and (device is None or device.type != "cpu"):
        accel.synchronize(device)


def empty_cache() -> None:
    """Return cached, unused device memory to the driver (no-op on CPU)."""
    accel = _accel()
    if accel is not None:
        accel.empty_cache()


def memory_allocated() -> int:
    """Bytes of device memory held by tensors now (0 on CPU)."""
    accel = _accel()
    return int(accel.memory_allocated()) if accel is not None else 0


def memory_reserved() -> int:
    """Bytes of device memory torch's caching allocator holds, in use or not (0 on CPU)."""
    accel = _accel()
    return int(accel.memory_reserved()) if accel is not None else 0


def max_memory_allocated() -> int:
    """Peak bytes held by tensors since the last :func:`reset_peak_memory_stats` (0 on CPU)."""
    accel = _accel()
    return int(accel.max_memory_allocated()) if accel is not None else 0


def reset_peak_memory_stats() -> None:
    """Start a new peak for :func:`max_memory_allocated` (no-op on CPU)."""
    accel = _accel()
    if accel is not None:
        accel.reset_peak_memory_stats()


def mem_get_info() -> tuple[int, int]:
    """``(free, total)`` bytes of the current device, as the driver reports them ((0, 0) on CPU)."""
    accel = _accel()
    if accel is None:
        return 0, 0
    free, total = accel.mem_get_info()
    return int(free), int(total)


def manual_seed_all(seed: int) -> None:
    """Seed torch's CPU generator and the generators of every visible device."""
    torch.manual_seed(seed)
    accel = _accel()
    if accel is not None:
        accel.manual_seed_all(seed)


def rng_state() -> torch.Tensor | None:
    """The current device's generator state (for checkpoints), or None on CPU."""
    accel = _accel()
    return accel.get_rng_state() if accel is not None else None


def set_rng_state(state: torch.Tensor | None) -> None:
    """Restore a state from :func:`rng_state`; None (a CPU checkpoint) is ignored."""
    accel = _accel()
    if accel is not None and state is not None:
        accel.set_rng_state(state)
