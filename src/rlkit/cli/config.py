"""``rlkit config``: print a recipe's fully resolved config, where each value came from, or check it."""

from __future__ import annotations

import typer
import yaml
from omegaconf import ListConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from rlkit.cli._checks import compose, dry_run
from rlkit.cli._options import CONFIG, OVERRIDES, PROFILE
from rlkit.config.fields import schema_fields
from rlkit.registry import get_recipe

EPILOG = (
    "Examples: [bold]rlkit config grpo --profile cpu trainer.total_steps=7[/], "
    "[bold]rlkit config grpo --sources model.path=./Qwen2.5-0.5B[/], [bold]rlkit config ppo --check[/]"
)


def config(
    recipe: str = typer.Argument(..., help="Recipe name (see `rlkit recipes`) or a recipe YAML path."),
    overrides: list[str] = OVERRIDES,
    profile: str = PROFILE,
    config_file: str = CONFIG,
    explain: bool = typer.Option(False, "--explain", help="Show every key with its value and meaning."),
    sources: bool = typer.Option(
        False, "--sources", help="Show where each value came from (schema, recipe, builtin_or, profile, ...)."
    ),
    check: bool = typer.Option(
        False, "--check", help="Run the dry run's checks (as `rlkit train --dry-run`)."
    ),
) -> None:
    """Print the fully resolved config of a recipe (recipe, then profile, then --config, then KEY=VALUE)."""
    origins: dict[str, str] = {}
    cfg = compose(
        recipe, profile=profile, config_file=config_file, overrides=overrides or [], origins=origins
    )
    if check:
        dry_run(cfg, _command(recipe))
    elif explain:
        table = Table("key", "value", "meaning", show_lines=False)
        for key, info in schema_fields().items():
            table.add_row(key, str(OmegaConf.select(cfg, key)), info.doc)
        Console().print(table)
    elif sources:
        width = max(len(k) for k in origins)
        for key, origin in origins.items():
            value = OmegaConf.select(cfg, key)
            typer.echo(f"{key.ljust(width)}  {_show(value)}  # {origin}")
    else:
        typer.echo(OmegaConf.to_yaml(cfg, resolve=True), nl=False)


def _show(value: object) -> str:
    plain = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
    text: str = yaml.safe_dump(plain, default_flow_style=True, width=10**6)
    return text.strip().removesuffix("\n...")


def _command(recipe: str) -> str:
    return "train" if recipe.endswith((".yaml", ".yml")) else get_recipe(recipe).command
