"""``rlkit profiles``: the hardware profiles as a table."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from rlkit.hardware.profiles import summarize_profiles
from rlkit.registry import profiles_dir

EPILOG = "Example: [bold]rlkit profiles[/], then [bold]rlkit train grpo --profile h100x8[/]"


def profiles(
    details: bool = typer.Option(
        False, "--details", "-d", help="Show each profile's full assumptions and every key it sets."
    ),
) -> None:
    """List the hardware profiles: the devices each expects, what it assumes, and the keys it sets."""
    table = Table(
        "profile", "devices", "memory / device", "assumes", title="rlkit profiles", show_lines=details
    )
    if details:
        table.add_column("sets")
    for s in summarize_profiles(profiles_dir()):
        devices = (
            f"{s.nodes}x{s.devices_per_node} {s.device}"
            if s.nodes > 1
            else f"{s.devices_per_node} {s.device}"
        )
        memory = f"{s.memory_per_device_gb:g} GB" if s.memory_per_device_gb else "-"
        row = [s.name, devices, memory, s.assumes if details else s.headline]
        if details:
            row.append("\n".join(f"{k}={v}" for k, v in s.settings.items()))
        table.add_row(*row)
    Console().print(table)
    typer.echo("Use one with --profile NAME; `rlkit config RECIPE --profile NAME` shows the composed result.")
