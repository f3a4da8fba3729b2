"""Registry integrity: every recipe and profile exists, composes, and profiles stay in their lane."""

from __future__ import annotations

import pytest

from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config
from rlkit.errors import UserError
from rlkit.registry import RECIPES, get_recipe, profile_names, recipes_dir


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_recipe_files_exist_and_compose(recipe) -> None:
    assert (recipes_dir() / recipe.config).is_file()
    if recipe.hooks:
        assert (recipes_dir() / f"{recipe.hooks}.py").is_file()
    cfg = to_dataclass(load_config(recipe.name))
    assert cfg.recipe == recipe.name


@pytest.mark.parametrize("profile", profile_names())
def test_profiles_compose_with_every_recipe(profile: str) -> None:
    for recipe in RECIPES:
        load_config(recipe.name, profile=profile)


def test_names_unique_and_cpu_profile_present() -> None:
    names = [r.name for r in RECIPES]
    assert len(names) == len(set(names))
    assert "cpu" in profile_names()
    assert {"ppo", "grpo"} <= set(names)


def test_unknown_recipe_lists_known() -> None:
    with pytest.raises(UserError) as err:
        get_recipe("grpoo")
    assert "grpo" in err.value.message and "did you mean grpo" in (err.value.hint or "")
