"""Where each value of a composed config came from (``rlkit config RECIPE --sources``).

The sources are replayed in the order compose applies them: the schema's defaults, the recipe's
parents and the recipe itself (following each file's ``defaults`` list, as Hydra does), the hardware
profile, the ``--config`` file, then the ``KEY=VALUE`` overrides; the last one to set a key is its
source. A recipe value written as ``${builtin_or:A,B}`` is labelled with the branch the model took.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from rlkit.config.compose import Sources
    from rlkit.config.fields import FieldInfo

SCHEMA_DEFAULT = "schema default"
SET_BY_RLKIT = "set by rlkit"
_SCHEMA_NAME = "rlkit_schema"


def flatten_keys(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a plain YAML mapping; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_keys(v, key + "."))
        else:
            out[key] = v
    return out


def _yaml_keys(path: Path) -> dict[str, Any]:
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    assert isinstance(raw, dict)
    raw.pop("defaults", None)
    return flatten_keys(raw)


def recipe_chain(recipe_file: Path, seen: frozenset[Path] = frozenset()) -> list[Path]:
    """The recipe files in the order Hydra applies them (parents before ``_self_`` by default)."""
    if recipe_file in seen:
        return []
    raw = OmegaConf.to_container(OmegaConf.load(recipe_file), resolve=False) or {}
    assert isinstance(raw, dict)
    entries = [e for e in raw.get("defaults", []) or [] if isinstance(e, str)]
    if "_self_" not in entries:
        entries.append("_self_")
    chain: list[Path] = []
    for entry in entries:
        if entry == "_self_":
            chain.append(recipe_file)
        elif entry != _SCHEMA_NAME:
            parent = recipe_file.parent / f"{entry}.yaml"
            if parent.is_file():
                chain += recipe_chain(parent, seen | {recipe_file})
    return chain


def _recipe_label(path: Path, value: Any, builtin: bool) -> str:
    label = f"recipe {path.name}"
    if isinstance(value, str) and "${builtin_or:" in value:
        branch = "built-in model value" if builtin else "real-model value"
        label += f", builtin_or ({branch})"
    return label


def origins(sources: Sources, cfg: DictConfig, fields: dict[str, FieldInfo]) -> dict[str, str]:
    """Dotted key -> where its value came from, for every key of the schema.

    Labels: ``schema default``; ``recipe FILE`` (``, builtin_or (built-in model value)`` or ``(real-
    model value)`` for ``${builtin_or:...}``); ``profile NAME`` (``, picked: no GPU found``);
    ``--config FILE``; ``override KEY=VALUE``; ``set by rlkit``.
    """
    out = dict.fromkeys(fields, SCHEMA_DEFAULT)
    builtin = str(OmegaConf.select(cfg, "model.path")).startswith("builtin:")
    for path in recipe_chain(sources.recipe_file):
        for key, value in _yaml_keys(path).items():
            out[key] = _recipe_label(path, value, builtin)
    if sources.profile_file is not None:
        label = f"profile {sources.profile_name or sources.profile_file.stem}"
        label += ", picked: no GPU found" if sources.profile_auto else ""
        out.update(dict.fromkeys(_yaml_keys(sources.profile_file), label))
    if sources.config_file is not None:
        out.update(dict.fromkeys(_yaml_keys(sources.config_file), f"--config {sources.config_file}"))
    for text in sources.overrides:
        out[text.split("=", 1)[0].strip()] = f"override {text}"
    out["recipe"] = out["hardware.profile"] = SET_BY_RLKIT
    return {k: v for k, v in out.items() if k in fields}
