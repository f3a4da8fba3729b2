"""``rlkit doctor``: the report's content, the support checks, the Ray probe, both output formats."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.hardware import doctor
from rlkit.hardware.doctor import DoctorReport, Finding, collect, ray_status, render_markdown, render_text


@pytest.fixture(scope="module")
def report() -> DoctorReport:
    return collect(ray_address="")


def test_report_has_every_section_and_version(report: DoctorReport) -> None:
    assert list(report.sections) == ["system", "packages", "accelerator", "devices", "ray"]
    packages = dict(report.sections["packages"])
    assert packages["torch"] == torch.__version__
    for name in ("transformers", "ray", "vllm", "sglang", "flash-attn", "megatron-core"):
        assert name in packages  # "not installed" is an answer too
    accel = dict(report.sections["accelerator"])
    assert {"device type", "torch CUDA build", "torch ROCm build", "CANN"} <= set(accel)
    assert any(name == "host" for name, _ in report.sections["devices"])


def test_this_environment_is_supported(report: DoctorReport) -> None:
    assert report.supported, render_text(report)
    texts = " ".join(f.text for f in report.findings)
    assert "torch" in texts and "transformers" in texts and "ray" in texts and "python" in texts


def test_text_and_markdown(report: DoctorReport) -> None:
    text = render_text(report)
    assert text.startswith("rlkit doctor") and "supported: all" in text and "torch" in text
    md = render_markdown(report)
    assert md.startswith("### rlkit doctor") and "| torch |" in md and "|---|---|" in md


def test_failed_checks_flip_the_verdict() -> None:
    report = DoctorReport(
        {"system": [("rlkit", "x")]}, [Finding(True, "fine"), Finding(False, "torch 2.1 (outside >=2.6)")]
    )
    assert not report.supported
    assert "FAIL  torch 2.1" in render_text(report) and "NOT SUPPORTED: 1 of 2" in render_text(report)
    assert "**FAIL**: torch 2.1" in render_markdown(report)


def test_cpu_build_of_torch_on_a_gpu_machine_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    findings = doctor._build_findings(["550.54.15, NVIDIA H100 80GB HBM3"] * 2)
    assert not findings[0].ok and "CPU build" in findings[0].text


def test_ray_status_without_an_address(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(doctor, "_RAY_CURRENT_CLUSTER", tmp_path / "none")
    assert ray_status(None) == (None, "RAY_ADDRESS not set: each run starts its own local Ray")
    assert ray_status("auto")[0] is False


def test_ray_status_reachable_and_not() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        ok, text = ray_status(f"127.0.0.1:{port}")
        assert ok and "reachable" in text
        assert ray_status(f"ray://127.0.0.1:{port}")[0]
    closed, text = ray_status(f"127.0.0.1:{port}", timeout_s=1.0)
    assert closed is False and "NOT reachable" in text
    assert ray_status("not-an-address")[0] is False


def test_ray_status_reads_the_local_cluster_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    marker = tmp_path / "ray_current_cluster"
    marker.write_text("127.0.0.1:1\n")
    monkeypatch.setattr(doctor, "_RAY_CURRENT_CLUSTER", marker)
    ok, text = ray_status(None, timeout_s=1.0)
    assert ok is False and "ray start" in text


def test_cli_doctor_plain_and_markdown() -> None:
    runner = CliRunner()
    plain = runner.invoke(app, ["doctor"], env={"RAY_ADDRESS": ""})
    assert plain.exit_code == 0, plain.output
    assert "packages" in plain.output and "support" in plain.output
    import transformers

    # every registered rollout engine, with its version (hf: the transformers it runs on)
    assert "rollout engines" in plain.output and "built in" in plain.output
    assert f"transformers {transformers.__version__}" in plain.output
    md = runner.invoke(app, ["doctor", "--markdown"], env={"RAY_ADDRESS": ""})
    assert md.exit_code == 0 and md.output.startswith("### rlkit doctor")


def test_a_pin_for_another_python_is_not_checked() -> None:
    """megatron-core is pinned per Python (0.16.1 below 3.12, >= 0.19 from it): only this Python's pin applies."""
    from packaging.requirements import Requirement

    from rlkit.hardware.doctor import _applies

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert _applies(
        Requirement(f"megatron-core==0.16.1; python_version == '{here}' and extra == 'megatron'"),
        ["megatron"],
    )
    assert not _applies(
        Requirement("megatron-core>=0.19; python_version < '3.0' and extra == 'megatron'"), ["megatron"]
    )
    assert not _applies(
        Requirement(f"megatron-core==0.16.1; python_version == '{here}' and extra == 'megatron'"), []
    )
