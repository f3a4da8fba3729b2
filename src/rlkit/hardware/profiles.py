"""Reading hardware profiles (``profiles/*.yaml``) for display: what each assumes and what it sets.

A profile is a YAML file of schema keys (only hardware, parallelism, batch and memory keys;
``rlkit.config.compose`` enforces that) whose leading comment states what it assumes: the
device, its memory, the interconnect and the model sizes it was sized for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

# Shown in their own columns of `rlkit profiles`, so left out of ProfileSummary.settings.
_HARDWARE_KEYS = (
    "hardware.device",
    "hardware.nodes",
    "hardware.devices_per_node",
    "hardware.memory_per_device_gb",
)


@dataclass(frozen=True)
class ProfileSummary:
    """One profile, as ``rlkit profiles`` shows it."""

    name: str
    device: str
    nodes: int
    devices_per_node: int
    memory_per_device_gb: float | None
    assumes: str
    """The profile's leading comment, joined into one paragraph."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Every other key it sets, dotted (``actor.micro_batch_tokens``) -> value."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices_per_node

    @property
    def headline(self) -> str:
        """The first sentence of :attr:`assumes` (the hardware it names)."""
        first = self.assumes.split(". ", 1)[0].rstrip(".")
        return f"{first}." if first else ""


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def leading_comment(path: Path) -> str:
    """The ``#`` lines at the top of ``path``, without the markers, joined with spaces."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(part for part in lines if part)


def profile_values(path: Path) -> dict[str, Any]:
    """The dotted keys a profile file sets, with their values."""
    raw = OmegaConf.to_container(OmegaConf.load(path)) or {}
    assert isinstance(raw, dict), f"{path} is not a mapping"
    return _flatten({str(k): v for k, v in raw.items()})


def summarize_profile(path: Path) -> ProfileSummary:
    """Read one profile file."""
    values = profile_values(path)
    memory = values.get("hardware.memory_per_device_gb")
    return ProfileSummary(
        name=path.stem,
        device=str(values.get("hardware.device", "auto")),
        nodes=int(values.get("hardware.nodes", 1)),
        devices_per_node=int(values.get("hardware.devices_per_node", 1)),
        memory_per_device_gb=float(memory) if memory is not None else None,
        assumes=leading_comment(path),
        settings={k: v for k, v in values.items() if k not in _HARDWARE_KEYS},
    )


def summarize_profiles(folder: Path) -> list[ProfileSummary]:
    """Every profile of ``folder``, smallest machine first (CPU, then by device count)."""
    summaries = [summarize_profile(p) for p in folder.glob("*.yaml")]
    return sorted(summaries, key=lambda s: (s.device != "cpu", s.world_size, s.name))
