"""Hardware layer: the device abstraction (cuda, rocm, npu, cpu)."""

from __future__ import annotations

from rlkit.hardware.device import (
    DeviceType,
    current_device,
    device_count,
    device_type,
    dist_backend,
    empty_cache,
    manual_seed_all,
    max_memory_allocated,
    mem_get_info,
    memory_allocated,
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
    "device_type",
    "dist_backend",
    "empty_cache",
    "manual_seed_all",
    "max_memory_allocated",
    "mem_get_info",
    "memory_allocated",
    "ray_resource_name",
    "reset_peak_memory_stats",
    "rng_state",
    "set_device",
    "set_rng_state",
    "synchronize",
    "torch_device_name",
    "visible_devices_env",
]
