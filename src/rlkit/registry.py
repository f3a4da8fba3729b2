"""The recipe registry: plain data, read by ``rlkit recipes`` and resolved by ``rlkit train``/``sft``.

A recipe is a YAML file in ``recipes/`` (installed as ``rlkit.recipes``) that sets values of the
config schema, plus an optional hook module in the same folder for recipes that need code (batch
filters, reward shaping, pair construction). Hardware profiles are the YAML files of ``profiles/``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rlkit.errors import UserError


@dataclass(frozen=True)
class Recipe:
    """One entry of the registry."""

    name: str
    """What users type: ``rlkit train NAME``."""
    algorithm: str
    """The algorithm it runs, as papers name it."""
    description: str
    """One line for ``rlkit recipes``."""
    config: str
    """YAML file in ``recipes/``."""
    command: str = "train"
    """The command that runs it: ``train`` (RL) or ``sft``."""
    hooks: str | None = None
    """Module in ``recipes/`` with the recipe's hook functions, if it needs code."""


RECIPES: tuple[Recipe, ...] = (
    Recipe("ppo", "PPO", "PPO with a learned critic and GAE advantages", "ppo.yaml"),
    Recipe("grpo", "GRPO", "Group-relative advantages, no critic; the embedded default", "grpo.yaml"),
    Recipe(
        "grpo_tools",
        "GRPO (multi-turn, tools)",
        "GRPO over tool-calling trajectories: the tiny model learns to use a calculator",
        "grpo_tools.yaml",
    ),
    Recipe(
        "grpo_gsm8k_tools",
        "GRPO (multi-turn, tools)",
        "GSM8K with a sandboxed Python code interpreter, for real instruction models",
        "grpo_gsm8k_tools.yaml",
    ),
    Recipe("drgrpo", "Dr. GRPO", "GRPO without std normalisation or length bias", "drgrpo.yaml"),
    Recipe("rloo", "RLOO", "Leave-one-out group baseline", "rloo.yaml"),
    Recipe(
        "reinforce_plus_plus", "REINFORCE++", "Batch-whitened discounted returns", "reinforce_plus_plus.yaml"
    ),
    Recipe(
        "reinforce_plus_plus_baseline",
        "REINFORCE++ (baseline)",
        "Group-mean baseline, then batch whitening",
        "reinforce_plus_plus_baseline.yaml",
    ),
    Recipe(
        "remax",
        "ReMax",
        "Greedy-rollout baseline (one extra generation per step)",
        "remax.yaml",
        hooks="remax",
    ),
    Recipe("opo", "OPO", "Length-weighted optimal baseline within each group", "opo.yaml"),
    Recipe("gpg", "GPG", "Group policy gradient (no ratio, no clipping)", "gpg.yaml"),
    Recipe("gdpo", "GDPO", "Each reward component normalised within its group, then summed", "gdpo.yaml"),
    Recipe("otb", "OTB", "Per-position baseline weighted by each path's gradient variance", "otb.yaml"),
    Recipe(
        "dppo", "DPPO", "Trust region on the binary TV divergence of each token, not the ratio", "dppo.yaml"
    ),
    Recipe(
        "dapo",
        "DAPO",
        "Clip-higher, dynamic sampling, token-mean loss, overlong reward shaping",
        "dapo.yaml",
        hooks="dapo",
    ),
    Recipe(
        "spin",
        "SPIN",
        "Self-play fine-tuning: DPO of reference responses over the model's own samples",
        "spin.yaml",
        hooks="spin",
    ),
    Recipe(
        "distill",
        "On-policy distillation",
        "The student samples, a frozen teacher scores its tokens (reverse KL or GKD top-k)",
        "distill.yaml",
    ),
    Recipe(
        "sppo",
        "SPPO",
        "Self-play preference optimisation: log-ratios regressed on centred rewards",
        "sppo.yaml",
    ),
    Recipe(
        "sft",
        "SFT",
        "Supervised fine-tuning on conversations; the default warm-starts the tiny model on arith",
        "sft.yaml",
        command="sft",
    ),
)


def recipes_dir() -> Path:
    """Folder of the shipped recipe YAML files."""
    return Path(str(resources.files("rlkit.recipes")))


def profiles_dir() -> Path:
    """Folder of the shipped hardware profiles."""
    return Path(str(resources.files("rlkit.profiles")))


def recipe_names(command: str | None = None) -> list[str]:
    return [r.name for r in RECIPES if command is None or r.command == command]


def get_recipe(name: str, command: str | None = None) -> Recipe:
    """The registry entry called ``name``; a UserError listing the known names otherwise."""
    for recipe in RECIPES:
        if recipe.name == name and (command is None or recipe.command == command):
            return recipe
    known = recipe_names(command)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UserError(
        f"unknown recipe {name!r}; known recipes: {', '.join(known)}", hint=hint + "see `rlkit recipes`"
    )


def resolve_recipe_file(name_or_path: str, command: str | None = None) -> tuple[str, Path]:
    """A registered name, or a path to a recipe YAML (e.g. one copied with ``rlkit cp``)."""
    if name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(f"recipe file not found: {path}")
        return path.stem, path
    recipe = get_recipe(name_or_path, command)
    return recipe.name, recipes_dir() / recipe.config


def profile_names() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def resolve_profile_file(name_or_path: str) -> Path:
    """A shipped profile name (``rlkit profiles``) or a path to a profile YAML."""
    if name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(f"profile file not found: {path}")
        return path
    path = profiles_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = profile_names()
        close = difflib.get_close_matches(name_or_path, known, n=1)
        hint = f"did you mean {close[0]}?" if close else "see `rlkit profiles`"
        raise UserError(f"unknown profile {name_or_path!r}; known profiles: {', '.join(known)}", hint=hint)
    return path
