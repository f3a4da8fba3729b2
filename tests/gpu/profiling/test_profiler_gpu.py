"""Profilers on a GPU: torch traces with CUDA kernels, memory snapshots, NVTX ranges seen by Nsight.

Run on the GPU machine with ``pytest -m gpu tests/gpu/profiling``. The Nsight test also needs
``nsys`` on PATH; the end-to-end test needs the trainer side of the hw patch.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.config.fields import schema_fields
from rlkit.hardware import device as hw
from rlkit.profiling.nvtx import trace_range
from rlkit.profiling.profiler import WorkerProfiler

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(hw.device_type() not in ("cuda", "rocm"), reason="needs a GPU"),
]


def _matmuls(dev: torch.device) -> torch.Tensor:
    with trace_range("actor.update"):
        x = torch.randn(512, 512, device=dev)
        y = x @ x
        hw.synchronize()
    return y


def test_torch_trace_has_kernels_and_method_ranges(tmp_path: Path) -> None:
    dev = hw.current_device(0)
    prof = WorkerProfiler()
    prof.start(tmp_path, "torch", rank=0)
    _matmuls(dev)
    (path,) = prof.stop()
    events = json.loads(Path(path).read_text())["traceEvents"]
    assert any(e.get("cat") == "kernel" for e in events), "no GPU kernels in the trace"
    assert any(e.get("name") == "actor.update" for e in events)


def test_memory_snapshot(tmp_path: Path) -> None:
    prof = WorkerProfiler()
    prof.start(tmp_path, "memory", rank=0)
    kept = _matmuls(hw.current_device(0))
    (path,) = prof.stop()
    snapshot = pickle.loads(Path(path).read_bytes())
    assert snapshot["segments"] and snapshot["device_traces"] and kept.numel() == 512 * 512


@pytest.mark.skipif(shutil.which("nsys") is None, reason="needs Nsight Systems (nsys) on PATH")
def test_nvtx_ranges_reach_nsight(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys

            import torch
            from rlkit.hardware import device as hw
            from rlkit.profiling.nvtx import nvtx_range, trace_range
            from rlkit.profiling.profiler import WorkerProfiler

            dev = hw.current_device(0)
            torch.randn(8, device=dev)  # context outside the capture range
            prof = WorkerProfiler()
            prof.start(sys.argv[1], "nsight")
            with nvtx_range("gen"), trace_range("rollout.generate"):
                (torch.randn(256, 256, device=dev) @ torch.randn(256, 256, device=dev)).sum().item()
            prof.stop()
            """
        )
    )
    from rlkit.profiling.launch import nsys_command

    report = tmp_path / "job"
    subprocess.run(
        nsys_command(shutil.which("nsys") or "nsys", report, [sys.executable, str(script), str(tmp_path)]),
        check=True,
    )
    stats = subprocess.run(
        ["nsys", "stats", "--report", "nvtx_sum", "--format", "csv", f"{report}.nsys-rep"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "gen" in stats and "rollout.generate" in stats


@pytest.mark.skipif("trainer.profile" not in schema_fields(), reason="needs the trainer side of the hw patch")
def test_rlkit_profile_torch_on_one_gpu(tmp_path: Path, ray_session: None) -> None:
    out = tmp_path / "run"
    args = ["profile", "--torch", "--steps", "1-1", "train", "grpo", "--profile", "h100x1"]
    args += ["trainer.total_steps=1", "data.batch_size=4", "actor.mini_batch_size=4", "rollout.n=2"]
    args += [
        "data.max_response_length=8",
        "trainer.val_every=0",
        "trainer.loggers=[jsonl]",
        f"trainer.out_dir={out}",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (trace,) = (out / "profile").glob("torch_rank0_steps1-1.pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("cat") == "kernel" for e in events)
    assert any(e.get("name") == "actor.update" for e in events)
