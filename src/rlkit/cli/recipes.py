"""``rlkit recipes``: the recipe registry as a table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from rlkit.registry import RECIPES

EPILOG = "Example: [bold]rlkit recipes[/], then [bold]rlkit train grpo[/]"


def recipes() -> None:
    """List the registered recipes (name, algorithm, command, config file)."""
    table = Table("recipe", "algorithm", "run with", "config", "description", title="rlkit recipes")
    for r in RECIPES:
        table.add_row(
            r.name, r.algorithm, f"rlkit {r.command} {r.name}", f"recipes/{r.config}", r.description
        )
    Console().print(table)
