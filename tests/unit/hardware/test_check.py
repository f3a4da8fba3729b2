"""The hardware check: what a profile expects against what the machine has, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.errors import UserError
from rlkit.hardware import device as hw
from rlkit.hardware.check import FoundDevices, found_devices, resolve_hardware

CPU = FoundDevices("cpu", (), ())
H100 = "NVIDIA H100 80GB HBM3"


def _gpus(n: int, name: str = H100, gb: float = 85.0, kind: str = "cuda") -> FoundDevices:
    return FoundDevices(kind, (name,) * n, (int(gb * 1e9),) * n)


def _check(
    wanted: str, found: FoundDevices, per_node: int = 1, memory: float | None = None, **kw: bool
) -> str:
    return resolve_hardware(wanted, devices_per_node=per_node, memory_per_device_gb=memory, found=found, **kw)


def test_cpu_always_resolves() -> None:
    assert _check("cpu", CPU) == "cpu"
    assert _check("cpu", _gpus(8)) == "cpu"
    assert _check("auto", CPU, per_node=4, memory=80) == "cpu"


def test_gpu_profile_on_cpu_says_expected_and_found() -> None:
    with pytest.raises(UserError) as err:
        _check("cuda", CPU, per_node=8, memory=80)
    msg = err.value.message
    assert "8 CUDA device(s) per node with 80 GB each" in msg and "no CUDA device" in msg
    assert "CPU only" in msg and "\n" not in msg
    assert "rlkit profiles" in (err.value.hint or "")


def test_npu_profile_on_gpu_machine() -> None:
    with pytest.raises(UserError, match="no NPU device was found; this machine has 8x NVIDIA H100"):
        _check("npu", _gpus(8), per_node=8, memory=64)


def test_too_few_devices() -> None:
    with pytest.raises(UserError, match=r"expects 8 CUDA device\(s\) per node.*found 1x NVIDIA H100") as err:
        _check("cuda", _gpus(1), per_node=8, memory=80)
    assert "hardware.devices_per_node=1" in (err.value.hint or "")


def test_too_little_memory() -> None:
    with pytest.raises(UserError, match=r"141 GB each, found 8x NVIDIA H100 80GB HBM3 \(85 GB each\)"):
        _check("cuda", _gpus(8), per_node=8, memory=141)
    with pytest.raises(UserError, match="24 GB each"):
        _check("cuda", _gpus(1, "NVIDIA A10G", 24.0), memory=80)


def test_matching_hardware_passes() -> None:
    assert _check("cuda", _gpus(8), per_node=8, memory=80) == "cuda"  # an 80 GB card reports ~85 GB
    assert _check("cuda", _gpus(8, gb=79.2), per_node=8, memory=80) == "cuda"  # or 79 GiB-ish
    assert _check("auto", _gpus(2), per_node=2, memory=80) == "cuda"
    assert _check("cuda", _gpus(8, "AMD Instinct MI300X", 206, kind="rocm"), per_node=8, memory=192) == "rocm"
    assert _check("npu", _gpus(8, "Ascend910B2", 65.5, kind="npu"), per_node=8, memory=64) == "npu"


def test_joining_a_cluster_skips_local_checks() -> None:
    assert _check("cuda", CPU, per_node=8, memory=80, joining_cluster=True) == "cuda"
    assert _check("auto", _gpus(1), per_node=8, memory=141, joining_cluster=True) == "cuda"


@pytest.mark.skipif(hw.device_type() != "cpu", reason="checks the CPU machine")
def test_found_devices_on_cpu() -> None:
    found = found_devices()
    assert found == CPU and "CPU only" in found.describe()
    assert hw.device_name() == "cpu" and hw.device_total_memory() == 0


@pytest.mark.skipif(hw.device_type() != "cpu", reason="needs a machine without GPUs")
@pytest.mark.parametrize("profile", ["h100x1", "mi300x8", "ascend910bx8"])
def test_train_with_missing_hardware_is_one_line_exit_2(profile: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "grpo", "--profile", profile, f"trainer.out_dir={tmp_path / 'run'}"]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "expects" in lines[0] and "this machine has" in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # nothing was written before the check
