"""From what a user typed (recipe, --profile, --config, KEY=VALUE) to a composed config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rlkit.config.compose import Sources, compose_config
from rlkit.errors import UserError
from rlkit.registry import get_recipe, resolve_profile_file, resolve_recipe_file


def load_config(
    recipe: str,
    *,
    profile: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    command: str | None = None,
    default_profile: str | None = None,
    origins: dict[str, str] | None = None,
) -> DictConfig:
    """Compose a recipe's config with a profile, a config file and overrides, in that order.

    Args:
        recipe: A registered recipe name or a recipe YAML path.
        profile: A hardware profile name or YAML path (``--profile``).
        config_file: A YAML file of config keys (``--config``).
        overrides: ``KEY=VALUE`` strings, applied last.
        command: The command it is for (``train``/``sft``): restricts recipe names and selects
            the rules between keys; None accepts any recipe.
        default_profile: The profile applied when ``profile`` is None (the CLI passes ``cpu``
            when this machine has no accelerator); recorded as picked by rlkit.
        origins: When given, filled with where each key's value came from.
    """
    name, recipe_file = resolve_recipe_file(recipe, command)
    chosen = profile or default_profile
    profile_file = resolve_profile_file(chosen) if chosen else None
    cfg_path = Path(config_file) if config_file else None
    if cfg_path is not None and not cfg_path.is_file():
        raise UserError(
            f"config file not found: {cfg_path}", hint="--config takes a YAML file of config keys"
        )
    sources = Sources(
        recipe_file,
        profile_file,
        cfg_path,
        tuple(overrides),
        profile_name=chosen,
        profile_auto=profile is None and chosen is not None,
        command=command or _command_of(recipe),
    )
    return compose_config(sources, name, origins)


def _command_of(recipe: str) -> str:
    """``sft`` for the registered SFT recipes, else ``train`` (recipe files are RL unless told)."""
    if recipe.endswith((".yaml", ".yml")):
        return "train"
    return get_recipe(recipe).command
