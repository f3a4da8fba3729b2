"""``rlkit config``: print a recipe's fully resolved config."""

from __future__ import annotations

import typer
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from rlkit.cli._options import CONFIG, OVERRIDES, PROFILE
from rlkit.config.fields import schema_fields
from rlkit.config.load import load_config

EPILOG = "Example: [bold]rlkit config grpo --profile cpu trainer.total_steps=7[/]"


def config(
    recipe: str = typer.Argument(..., help="Recipe name (see `rlkit recipes`) or a recipe YAML path."),
    overrides: list[str] = OVERRIDES,
    profile: str = PROFILE,
    config_file: str = CONFIG,
    explain: bool = typer.Option(False, "--explain", help="Show every key with its value and meaning."),
) -> None:
    """Print the fully resolved config of a recipe (recipe, then profile, then --config, then KEY=VALUE)."""
    cfg = load_config(recipe, profile=profile, config_file=config_file, overrides=overrides or [])
    if not explain:
        typer.echo(OmegaConf.to_yaml(cfg, resolve=True), nl=False)
        return
    table = Table("key", "value", "meaning", show_lines=False)
    for key, info in schema_fields().items():
        value = OmegaConf.select(cfg, key)
        table.add_row(key, str(value), info.doc)
    Console().print(table)
