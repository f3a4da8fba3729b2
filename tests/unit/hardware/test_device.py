from __future__ import annotations

import pytest
import torch

from rlkit import hardware
from rlkit.hardware import device as hw

on_cpu = pytest.mark.skipif(hw.device_type() != "cpu", reason="checks the CPU fallbacks")


@on_cpu
def test_detection_on_cpu() -> None:
    assert hw.device_type() == "cpu"
    assert hw.torch_device_name() == "cpu"
    assert hw.dist_backend() == "gloo"
    assert hw.device_count() == 0
    assert hw.current_device(3) == torch.device("cpu")
    assert hw.visible_devices_env() == []
    assert hw.ray_resource_name() is None


@on_cpu
def test_memory_and_sync_helpers_are_safe_no_ops() -> None:
    hw.synchronize()
    hw.empty_cache()
    hw.reset_peak_memory_stats()
    hw.set_device(torch.device("cpu"))
    assert hw.memory_allocated() == 0
    assert hw.max_memory_allocated() == 0
    assert hw.mem_get_info() == (0, 0)
    assert hw.rng_state() is None
    hw.set_rng_state(None)


def test_manual_seed_all_seeds_torch() -> None:
    hw.manual_seed_all(123)
    a = torch.rand(3)
    hw.manual_seed_all(123)
    assert torch.equal(a, torch.rand(3))


@pytest.mark.parametrize(
    ("kind", "name", "backend", "env", "resource"),
    [
        ("cuda", "cuda", "nccl", ["CUDA_VISIBLE_DEVICES"], "GPU"),
        ("rocm", "cuda", "nccl", ["HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"], "GPU"),
        ("npu", "npu", "hccl", ["ASCEND_RT_VISIBLE_DEVICES"], "NPU"),
        ("cpu", "cpu", "gloo", [], None),
    ],
)
def test_per_kind_tables(kind: str, name: str, backend: str, env: list[str], resource: str | None) -> None:
    assert hw.torch_device_name(kind) == name
    assert hw.dist_backend(kind) == backend
    assert hw.visible_devices_env(kind) == env
    assert hw.ray_resource_name(kind) == resource


def test_detection_follows_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate a ROCm build that sees a GPU; the cache must be cleared around the fake.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", "6.2")
    hw.device_type.cache_clear()
    try:
        assert hw.device_type() == "rocm"
        assert hw.torch_device_name() == "cuda" and hw.dist_backend() == "nccl"
        monkeypatch.setattr(torch.version, "hip", None)
        hw.device_type.cache_clear()
        assert hw.device_type() == "cuda"
    finally:
        monkeypatch.undo()
        hw.device_type.cache_clear()


def test_npu_probe_without_torch_npu_installed() -> None:
    hw._npu_module.cache_clear()
    assert hw._npu_module() is None or hw.device_type() == "npu"


def test_package_reexports() -> None:
    assert hardware.device_type is hw.device_type
    assert set(hardware.__all__) <= set(dir(hardware))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_gpu() -> None:
    assert hw.device_type() in ("cuda", "rocm")
    assert hw.device_count() >= 1
    dev = hw.current_device(0)
    x = torch.ones(1024, 1024, device=dev)
    hw.synchronize()
    assert hw.memory_allocated() >= x.numel() * 4
    free, total = hw.mem_get_info()
    assert 0 < free <= total
    state = hw.rng_state()
    a = torch.rand(4, device=dev)
    hw.set_rng_state(state)
    assert torch.equal(a, torch.rand(4, device=dev))
