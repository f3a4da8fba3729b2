"""``rlkit profiles``: the hardware profiles as a table."""

from __future__ import annotations

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from rlkit.registry import profiles_dir

EPILOG = "Example: [bold]rlkit profiles[/], then [bold]rlkit train grpo --profile cpu[/]"


def profiles() -> None:
    """List the hardware profiles with what they assume and the keys they set."""
    table = Table("profile", "assumes", "sets", title="rlkit profiles")
    for path in sorted(profiles_dir().glob("*.yaml")):
        lines = path.read_text().splitlines()
        assumes = " ".join(line.lstrip("# ").strip() for line in lines if line.startswith("#"))
        values = OmegaConf.to_container(OmegaConf.load(path)) or {}
        sets = ", ".join(f"{g}.{k}={v}" for g, sub in values.items() for k, v in sub.items())  # type: ignore[union-attr]
        table.add_row(path.stem, assumes, sets)
    Console().print(table)
