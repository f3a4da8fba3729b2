"""From what a user typed (recipe, --profile, --config, KEY=VALUE) to a composed config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rlkit.config.compose import Sources, compose_config
from rlkit.errors import UserError
from rlkit.registry import resolve_profile_file, resolve_recipe_file


def load_config(
    recipe: str,
    *,
    profile: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    command: str | None = None,
) -> DictConfig:
    """Compose a recipe's config with a profile, a config file and overrides, in that order."""
    name, recipe_file = resolve_recipe_file(recipe, command)
    profile_file = resolve_profile_file(profile) if profile else None
    cfg_path = Path(config_file) if config_file else None
    if cfg_path is not None and not cfg_path.is_file():
        raise UserError(
            f"config file not found: {cfg_path}", hint="--config takes a YAML file of config keys"
        )
    sources = Sources(recipe_file, profile_file, cfg_path, tuple(overrides))
    return compose_config(sources, name)
