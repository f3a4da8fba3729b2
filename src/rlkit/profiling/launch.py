"""Before a profiled run starts: can this machine run the chosen profiler, and the ``nsys`` command line.

Every check here runs in the driver before Ray starts, so a missing tool or device is one
:class:`~rlkit.errors.UserError` line, not a failure inside a worker minutes later.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from rlkit.errors import UserError
from rlkit.hardware import capture
from rlkit.hardware import device as hw

# CUDA API, NVTX ranges and OS runtime calls; CPU sampling is off because it costs the most and
# the NVTX ranges of every worker method and stage already say where the time goes.
NSYS_OPTIONS = (
    "--trace=cuda,nvtx,osrt",
    "--sample=none",
    "--capture-range=cudaProfilerApi",
    "--capture-range-end=stop",
    "--force-overwrite=true",
)


def nsys_executable() -> str:
    """Path of ``nsys``.

    Raises:
        UserError: ``nsys`` is not on PATH.
    """
    path = shutil.which("nsys")
    if path is None:
        raise UserError(
            "--nsight needs Nsight Systems, but `nsys` is not on PATH",
            hint="install Nsight Systems (it comes with the CUDA toolkit and the rlkit CUDA image) "
            "or profile with --torch",
        )
    return path


def nsys_command(nsys: str, report: Path, argv: list[str]) -> list[str]:
    """``nsys profile ... -o REPORT ARGV``: the job of ``argv`` traced in the CUDA profiler-API range only.

    Args:
        nsys: Path of the ``nsys`` executable.
        report: Report path without suffix (nsys adds ``.nsys-rep``).
        argv: The command to trace; its child processes (a local Ray's workers) are traced too.
    """
    return [nsys, "profile", *NSYS_OPTIONS, f"--output={report}", *argv]


def preflight(kind: str, *, joining_cluster: bool = False) -> None:
    """Check that this machine can run profiler ``kind`` (see :mod:`rlkit.profiling.profiler`).

    Args:
        kind: ``torch``, ``npu``, ``memory`` or ``nsight``.
        joining_cluster: The run joins an existing Ray cluster, whose devices this machine may
            not have; only the local tools are checked then (and ``nsight`` is refused: it
            traces the processes of this machine only).

    Raises:
        UserError: ``nsight`` without ``nsys``, a CUDA GPU, or with a joined cluster; ``npu``
            without torch_npu or an NPU; ``memory`` without a GPU or NPU.
    """
    found = hw.device_type()
    if kind == "nsight":
        nsys_executable()
        if joining_cluster:
            raise UserError(
                "--nsight runs the job under nsys on this machine, which cannot trace a joined Ray cluster",
                hint="unset RAY_ADDRESS / hardware.ray_address to profile a local run, or use --torch",
            )
        if found not in ("cuda", "rocm"):
            raise UserError(
                f"--nsight traces CUDA GPUs, but this machine has none (found: {found})",
                hint="use --torch, which also runs on CPU",
            )
    elif kind == "npu":
        if importlib.util.find_spec("torch_npu") is None:
            raise UserError(
                "--npu needs torch_npu (Ascend), which is not installed",
                hint="pip install 'rlkit[npu]', or use --torch",
            )
        if found != "npu" and not joining_cluster:
            raise UserError(
                f"--npu profiles Ascend NPUs, but none was found (found: {found})", hint="use --torch"
            )
    elif kind == "memory" and not joining_cluster and not capture.memory_snapshots_supported():
        raise UserError(
            f"--memory records GPU/NPU allocations, but this machine has no GPU or NPU (found: {found})",
            hint="use --torch, which also runs on CPU",
        )
