"""Does this machine have the hardware a profile asks for? One line saying what was expected and found.

:func:`resolve_hardware` runs in the Ray driver before anything starts, so a GPU profile on a
laptop, an 8-GPU profile on a 1-GPU box, or an H200 profile on an 80 GB card fails at once with
one :class:`~rlkit.errors.UserError` instead of an out-of-memory error an hour in. When the run
joins an existing Ray cluster the devices are on other machines, and only Ray can tell; the
checks are skipped then (the resource pool reports a shortage itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlkit.errors import UserError
from rlkit.hardware import device as hw

# A card sold as "80 GB" reports anything from 79 GiB to 85 GB; only a clearly smaller card fails.
_MEMORY_TOLERANCE = 0.95
_LABELS = {"cuda": "CUDA", "rocm": "ROCm", "npu": "NPU", "cpu": "CPU"}
_FIX = "use a profile that matches this machine (`rlkit profiles`), or --profile cpu"


@dataclass(frozen=True)
class FoundDevices:
    """What this process sees: the device family, and the name and memory of each device."""

    kind: str
    names: tuple[str, ...]
    memory_bytes: tuple[int, ...]

    def describe(self) -> str:
        """``"8x NVIDIA H100 80GB HBM3 (85 GB each)"``, or ``"CPU only (torch 2.6.0+cpu)"``."""
        if self.kind == "cpu":
            build = "" if torch.version.cuda or torch.version.hip else ", a CPU build of torch"
            return f"no GPU or NPU, CPU only (torch {torch.__version__}{build})"
        names = sorted(set(self.names))
        smallest = min(self.memory_bytes) / 1e9
        return f"{len(self.names)}x {' / '.join(names)} ({smallest:.0f} GB each)"


def found_devices() -> FoundDevices:
    """The devices of this process, from the device layer."""
    kind = hw.device_type()
    count = hw.device_count()
    return FoundDevices(
        kind,
        tuple(hw.device_name(i) for i in range(count)),
        tuple(hw.device_total_memory(i) for i in range(count)),
    )


def _matches(wanted: str, found: str) -> bool:
    # ROCm builds of torch expose AMD GPUs as "cuda" devices, so a cuda profile runs there too.
    return wanted == found or (wanted == "cuda" and found == "rocm")


def _expectation(wanted: str, per_node: int, memory_gb: float | None) -> str:
    memory = f" with {memory_gb:g} GB each" if memory_gb else ""
    return f"{per_node} {_LABELS.get(wanted, wanted)} device(s) per node{memory}"


def resolve_hardware(
    wanted: str,
    *,
    devices_per_node: int,
    memory_per_device_gb: float | None,
    joining_cluster: bool = False,
    found: FoundDevices | None = None,
) -> str:
    """``hardware.device`` resolved against this machine: ``"cpu"``, ``"cuda"``, ``"rocm"`` or ``"npu"``.

    Args:
        wanted: ``hardware.device``: ``auto``, ``cpu``, ``cuda``, ``rocm`` or ``npu``.
        devices_per_node: ``hardware.devices_per_node``; checked against the devices found.
        memory_per_device_gb: ``hardware.memory_per_device_gb``; a device with clearly less
            memory than this fails (None: not checked).
        joining_cluster: The run joins an existing Ray cluster; the devices are not local, so
            only ``wanted`` is returned (``auto`` still resolves from this machine).
        found: What this machine has (default: :func:`found_devices`; tests pass fakes).

    Raises:
        UserError: The machine lacks the device family, the count, or the memory asked for.
    """
    found = found or found_devices()
    if wanted == "cpu":
        return "cpu"
    if joining_cluster and wanted != "auto":
        return wanted
    if wanted == "auto":
        if found.kind == "cpu":
            return "cpu"
        wanted = found.kind
    expected = _expectation(wanted, devices_per_node, memory_per_device_gb)
    if not _matches(wanted, found.kind):
        raise UserError(
            f"hardware.device={wanted} expects {expected}, but no {_LABELS.get(wanted, wanted)} device "
            f"was found; this machine has {found.describe()}",
            hint=_FIX,
        )
    if joining_cluster:
        return found.kind
    if len(found.names) < devices_per_node:
        raise UserError(
            f"the profile expects {expected}, found {found.describe()}",
            hint=_FIX + f", or hardware.devices_per_node={len(found.names)}",
        )
    if memory_per_device_gb:
        smallest = min(found.memory_bytes[:devices_per_node]) / 1e9
        if smallest < _MEMORY_TOLERANCE * memory_per_device_gb:
            raise UserError(
                f"the profile expects {expected}, found {found.describe()}",
                hint=_FIX + ", or set hardware.memory_per_device_gb to what the devices have",
            )
    return found.kind
