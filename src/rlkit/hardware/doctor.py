"""``rlkit doctor``: what this environment is, and whether rlkit supports it, ready to paste into a bug report.

Collects versions (Python, torch and its CUDA / ROCm build, CANN, the libraries rlkit uses or
plugs into), the devices torch sees, whether a Ray cluster is reachable at ``RAY_ADDRESS``, and
checks the installed versions against what rlkit declares (its own package metadata, so the
rules are the ones in ``pyproject.toml``) plus the torch pins of vLLM, SGLang and torch_npu.
Nothing here starts Ray, allocates device memory, or touches the network beyond one TCP connect
to the Ray address.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from rlkit.hardware import device as hw

# Shown in this order; every one is reported, installed or not.
PACKAGES = (
    "torch",
    "transformers",
    "ray",
    "vllm",
    "sglang",
    "flash-attn",
    "megatron-core",
    "torch-npu",
    "nvtx",
    "datasets",
    "peft",
    "safetensors",
    "hydra-core",
    "numpy",
)
# Engines built against one torch release: their declared torch pin must hold.
TORCH_PINNED = ("vllm", "sglang", "flash-attn", "megatron-core")
_VISIBLE_ENV = (
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "ASCEND_RT_VISIBLE_DEVICES",
)
_RAY_CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")
_CMD_TIMEOUT_S = 10.0

Rows = list[tuple[str, str]]


@dataclass(frozen=True)
class Finding:
    """One support check: passed or not, and what it says."""

    ok: bool
    text: str


@dataclass
class DoctorReport:
    """Everything ``rlkit doctor`` prints, as titled sections of ``(name, value)`` rows plus findings."""

    sections: dict[str, Rows] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def supported(self) -> bool:
        return all(f.ok for f in self.findings)


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str]) -> str | None:
    """stdout of ``cmd`` if it exists and succeeds within the timeout, else None."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _rlkit_revision() -> str:
    version = installed_version("rlkit") or "not installed"
    checkout = Path(__file__).resolve().parents[3]
    commit = (
        _run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"])
        if (checkout / ".git").exists()
        else None
    )
    return f"{version} (git {commit})" if commit else version


def _system_rows() -> Rows:
    return [
        ("rlkit", _rlkit_revision()),
        ("python", f"{platform.python_version()} ({platform.python_implementation()}) at {sys.executable}"),
        ("platform", platform.platform()),
    ]


def _package_rows() -> Rows:
    return [(name, installed_version(name) or "not installed") for name in PACKAGES]


def cann_version() -> str | None:
    """The CANN toolkit version (Ascend), from torch_npu or the toolkit's install info; None if absent."""
    home = os.environ.get("ASCEND_TOOLKIT_HOME") or "/usr/local/Ascend/ascend-toolkit/latest"
    for info in sorted(Path(home).glob("*/ascend_toolkit_install.info")):
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("version="):
                return line.split("=", 1)[1].strip()
    return None


def _nvidia_smi() -> list[str]:
    """``driver_version, name`` per GPU that the NVIDIA driver sees ([] without nvidia-smi)."""
    out = _run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"])
    return [line.strip() for line in out.splitlines() if line.strip()] if out else []


def _accelerator_rows(smi: list[str]) -> Rows:
    kind = hw.device_type()
    rows: Rows = [("device type", kind if kind != "cpu" else "cpu (torch sees no GPU or NPU)")]
    rows.append(("torch CUDA build", torch.version.cuda or "none"))
    if torch.version.cuda and torch.backends.cudnn.is_available():  # type: ignore[no-untyped-call]
        rows.append(("cuDNN", str(torch.backends.cudnn.version())))  # type: ignore[no-untyped-call]
    if smi:
        rows.append(("NVIDIA driver", smi[0].split(",")[0].strip()))
    rows.append(("torch ROCm build", torch.version.hip or "none"))
    rocm_info = Path("/opt/rocm/.info/version")
    if rocm_info.is_file():
        rows.append(("ROCm installed", rocm_info.read_text().strip()))
    rows.append(("CANN", cann_version() or "not found"))
    rows += [(name, os.environ[name]) for name in _VISIBLE_ENV if name in os.environ]
    return rows


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 0.0


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _device_rows() -> Rows:
    kind, count = hw.device_type(), hw.device_count()
    rows: Rows = [
        (f"{kind}:{i}", f"{hw.device_name(i)}, {hw.device_total_memory(i) / 1e9:.1f} GB")
        for i in range(count)
    ]
    rows.append(("host", f"{_cpu_name()}, {os.cpu_count()} CPU cores, {_memory_gb():.1f} GB RAM"))
    return rows


def _reachable(host: str, port: int, timeout_s: float) -> str | None:
    """None if a TCP connection to ``host:port`` opens, else the reason it did not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def ray_status(address: str | None, timeout_s: float = 2.0) -> tuple[bool | None, str]:
    """Whether the Ray cluster at ``address`` (``RAY_ADDRESS``) accepts connections.

    Returns:
        ``(reachable, text)``; ``reachable`` is None when there is nothing to check (no address
        and no cluster started with ``ray start`` on this machine).
    """
    note = ""
    if not address or address == "auto":
        if not _RAY_CURRENT_CLUSTER.is_file():
            if address == "auto":
                return False, "RAY_ADDRESS=auto but no cluster was started with `ray start` on this machine"
            return None, "RAY_ADDRESS not set: each run starts its own local Ray"
        address = _RAY_CURRENT_CLUSTER.read_text().strip()
        note = " (the cluster `ray start` left on this machine; ray.init() joins it)"
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port_text = target.rpartition(":")
    if not host or not port_text.isdigit():
        return False, f"cannot parse Ray address {address!r} (expected host:port, ray://host:port or auto)"
    reason = _reachable(host.strip("[]"), int(port_text), timeout_s)
    if reason is None:
        return True, f"{address}{note}: reachable"
    return False, f"{address}{note}: NOT reachable ({reason})"


def _requirement_findings(versions: dict[str, str | None]) -> list[Finding]:
    """rlkit's declared requirements (core always, extras when installed) against what is installed."""
    findings = []
    meta = metadata.metadata("rlkit") if versions.get("rlkit") else None
    python_spec = meta["Requires-Python"] if meta is not None and "Requires-Python" in meta else ""
    if python_spec:
        ok = Version(platform.python_version()) in SpecifierSet(python_spec)
        findings.append(Finding(ok, f"python {platform.python_version()} (rlkit needs {python_spec})"))
    extras = meta.get_all("Provides-Extra") or [] if meta is not None else []
    seen: set[tuple[str, str]] = set()
    for text in (metadata.requires("rlkit") or []) if versions.get("rlkit") else []:
        req = Requirement(text)
        extra = req.marker is not None and "extra" in str(req.marker)
        if extra and req.name not in PACKAGES:
            continue  # test/docs tooling says nothing about the runtime
        if not _applies(req, extras) or (req.name, str(req.specifier)) in seen:
            continue  # another Python's pin (megatron-core: 0.16.1 on 3.11, >= 0.19 on 3.12), or said already
        seen.add((req.name, str(req.specifier)))
        found = versions.get(req.name) or installed_version(req.name)
        if found is None:
            if not extra:
                findings.append(Finding(False, f"{req.name} is not installed (rlkit needs {req.specifier})"))
            continue
        ok = req.specifier.contains(Version(found), prereleases=True)
        findings.append(
            Finding(ok, f"{req.name} {found} ({'meets' if ok else 'outside'} rlkit's {req.specifier})")
        )
    return findings


def _applies(req: Requirement, extras: list[str]) -> bool:
    """Whether a requirement's environment marker holds here (for the base install or any extra)."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in ["", *extras])


def _torch_pin_findings(versions: dict[str, str | None]) -> list[Finding]:
    """Engines compiled against one torch release must find that release."""
    torch_version = Version(torch.__version__)
    findings = []
    for dist in TORCH_PINNED:
        if versions.get(dist) is None:
            continue
        for text in metadata.requires(dist) or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if (
                req.name != "torch"
                or not req.specifier
                or (req.marker and not req.marker.evaluate({"extra": ""}))
            ):
                continue
            ok = req.specifier.contains(torch_version, prereleases=True)
            findings.append(
                Finding(
                    ok,
                    f"{dist} {versions[dist]} declares torch{req.specifier}; found torch {torch.__version__}",
                )
            )
    npu = versions.get("torch-npu")
    if npu is not None:
        ok = Version(npu).release[:2] == torch_version.release[:2]
        findings.append(
            Finding(ok, f"torch-npu {npu} with torch {torch.__version__} (major.minor must match)")
        )
    return findings


def _build_findings(smi: list[str]) -> list[Finding]:
    """A machine with GPUs and a CPU build of torch is the commonest broken install."""
    if smi and not torch.version.cuda and hw.device_type() == "cpu":
        return [
            Finding(
                False,
                f"nvidia-smi lists {len(smi)} GPU(s) but torch {torch.__version__} is a CPU build; "
                "install a CUDA build of torch",
            )
        ]
    return []


def support_findings(smi: list[str] | None = None) -> list[Finding]:
    """Every support check for this environment (see the module docstring)."""
    versions = {name: installed_version(name) for name in (*PACKAGES, "rlkit")}
    smi = _nvidia_smi() if smi is None else smi
    try:
        return _requirement_findings(versions) + _torch_pin_findings(versions) + _build_findings(smi)
    except InvalidVersion as exc:  # a hand-built package with a non-PEP 440 version
        return [Finding(False, f"cannot compare versions: {exc}")]


def collect(ray_address: str | None = None, engines: Rows | None = None) -> DoctorReport:
    """Gather the whole report (``ray_address`` defaults to ``$RAY_ADDRESS``).

    Args:
        ray_address: The Ray cluster to probe.
        engines: ``(engine, version)`` rows of the rollout engines, given by the caller (this
            module sits below :mod:`rlkit.rollout` and does not import it).
    """
    smi = _nvidia_smi()
    _, ray_text = ray_status(ray_address if ray_address is not None else os.environ.get("RAY_ADDRESS"))
    report = DoctorReport()
    report.sections["system"] = _system_rows()
    report.sections["packages"] = _package_rows()
    report.sections["accelerator"] = _accelerator_rows(smi)
    report.sections["devices"] = _device_rows()
    report.sections["ray"] = [("cluster", ray_text)]
    if engines is not None:
        report.sections["rollout engines"] = engines
    report.findings = support_findings(smi)
    return report


def _verdict(report: DoctorReport) -> str:
    if report.supported:
        return f"supported: all {len(report.findings)} checks passed"
    bad = sum(not f.ok for f in report.findings)
    return f"NOT SUPPORTED: {bad} of {len(report.findings)} checks failed (marked FAIL above)"


def render_text(report: DoctorReport) -> str:
    """Plain text, aligned, for a terminal or a plain bug report."""
    width = max(len(name) for rows in report.sections.values() for name, _ in rows) + 2
    lines = ["rlkit doctor"]
    for title, rows in report.sections.items():
        lines.append(f"\n{title}")
        lines += [f"  {name:<{width}}{value}" for name, value in rows]
    lines.append("\nsupport")
    lines += [f"  {'ok  ' if f.ok else 'FAIL'}  {f.text}" for f in report.findings]
    lines.append(f"\n{_verdict(report)}")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", r"\|")


def render_markdown(report: DoctorReport) -> str:
    """GitHub-flavoured Markdown (a table per section), for pasting into an issue."""
    lines = ["### rlkit doctor", ""]
    for title, rows in report.sections.items():
        lines += [f"**{title}**", "", "| | |", "|---|---|"]
        lines += [f"| {_cell(name)} | {_cell(value)} |" for name, value in rows]
        lines.append("")
    lines += ["**support**", ""]
    lines += [f"- {'ok' if f.ok else '**FAIL**'}: {_cell(f.text)}" for f in report.findings]
    lines += ["", f"**{_verdict(report)}**"]
    return "\n".join(lines)
