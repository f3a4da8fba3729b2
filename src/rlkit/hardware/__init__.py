"""Hardware layer: the device abstraction (cuda, rocm, npu, cpu), device graphs and profiler hooks
(:mod:`~rlkit.hardware.graphs`, :mod:`~rlkit.hardware.capture`), the hardware check of profiles
(:mod:`~rlkit.hardware.check`, :mod:`~rlkit.hardware.profiles`) and ``rlkit doctor``
(:mod:`~rlkit.hardware.doctor`)."""

from __future__ import annotations

from rlkit.hardware.device import (
    DeviceType,
    current_device,
    device_count,
    device_name,
    device_total_memory,
    device_type,
    dist_backend,
    empty_cache,
    manual_seed_all,
    max_memory_allocated,
    mem_get_info,
    memory_allocated,
    memory_reserved,
    ray_resource_name,
    reset_peak_memory_stats,
    rng_state,
    set_device,
    set_rng_state,
    synchronize,
    torch_device_name,
    visible_devices_env,
)

__all__ = [
    "DeviceType",
    "current_device",
    "device_count",
    "device_name",
    "device_total_memory",
    "device_type",
    "dist_backend",
    "empty_cache",
    "manual_seed_all",
    "max_memory_allocated",
    "mem_get_info",
    "memory_allocated",
    "memory_reserved",
    "ray_resource_name",
    "reset_peak_memory_stats",
    "rng_state",
    "set_device",
    "set_rng_state",
    "synchronize",
    "torch_device_name",
    "visible_devices_env",
]
