"""Compose a run's config: recipe, then profile, then ``--config`` file, then ``KEY=VALUE`` overrides.

Hydra's compose API loads the recipe YAML (whose defaults list names the schema, or a parent recipe)
with the hardware profile appended as a ``profile@_global_`` group; the ``--config`` file and the
overrides (parsed with Hydra's override grammar) are merged on top, in that order. Every key is
checked against the schema before merging so that a typo fails at once, naming the file it came from
and the closest real key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlkit.config.fields import FieldInfo, schema_fields
from rlkit.config.schema import RlkitConfig
from rlkit.errors import UserError

SCHEMA_NAME = "rlkit_schema"
BUILTIN_MODEL_PREFIX = "builtin:"


def _builtin_or(builtin: Any, other: Any, *, _root_: DictConfig) -> Any:
    """``${builtin_or:A,B}`` in a recipe: A when ``model.path`` is a built-in tiny model, else B.

    Recipes use it for the few values (the learning rate) that the embedded default's tiny model
    needs and a real model must not get; an explicit value set by the user replaces the whole
    expression.
    """
    return builtin if str(_root_.model.path).startswith(BUILTIN_MODEL_PREFIX) else other


if not OmegaConf.has_resolver("builtin_or"):
    OmegaConf.register_new_resolver("builtin_or", _builtin_or)


@dataclass(frozen=True)
class Sources:
    """Where a run's values come from, in the order they are applied."""

    recipe_file: Path
    profile_file: Path | None = None
    config_file: Path | None = None
    overrides: tuple[str, ...] = ()


def compose_config(sources: Sources, recipe_name: str) -> DictConfig:
    """Compose and validate; returns the typed OmegaConf config (schema-backed, interpolations kept)."""
    fields = schema_fields()
    _check_yaml_keys(sources.recipe_file, fields, what="recipe")
    if sources.profile_file is not None:
        _check_yaml_keys(sources.profile_file, fields, what="profile", profile=True)
    cfg = _hydra_compose(sources)
    if sources.config_file is not None:
        _check_yaml_keys(sources.config_file, fields, what="config file")
        _merge(cfg, OmegaConf.load(sources.config_file), str(sources.config_file))
    for key, value, text in _parse_overrides(sources.overrides, fields):
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as exc:
            raise _type_error(key, value, fields, f"override {text!r}") from exc
    cfg.recipe = recipe_name
    _check_values(cfg, fields)
    return cfg


def to_dataclass(cfg: DictConfig) -> RlkitConfig:
    """Resolve interpolations and build the :class:`RlkitConfig` instance the trainer uses."""
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise UserError(f"config cannot be resolved: {exc}", hint="check ${...} interpolations") from exc
    assert isinstance(obj, RlkitConfig)
    return obj


def _hydra_compose(sources: Sources) -> DictConfig:
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=RlkitConfig)
    overrides = []
    if sources.profile_file is not None:
        store.store(
            group="profile", name=sources.profile_file.stem, node=OmegaConf.load(sources.profile_file)
        )
        overrides.append(f"+profile@_global_={sources.profile_file.stem}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(sources.recipe_file.parent.resolve()), version_base=None):
            cfg = compose(config_name=sources.recipe_file.stem, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(
            f"cannot compose {sources.recipe_file}: {_first_line(exc)}",
            hint=f"its defaults list must start with `{SCHEMA_NAME}` or another recipe",
        ) from exc
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, True)
    return cfg


def _merge(cfg: DictConfig, other: Any, where: str) -> None:
    try:
        merged = OmegaConf.merge(cfg, other)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise UserError(f"{where}: bad value for {key}: {_first_line(exc)}") from exc
    assert isinstance(merged, DictConfig)
    for k in list(cfg.keys()):
        cfg[k] = merged[k]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a plain YAML mapping; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_yaml_keys(path: Path, fields: dict[str, FieldInfo], *, what: str, profile: bool = False) -> None:
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as exc:  # yaml errors come in several types
        raise UserError(f"{path}: not valid YAML: {_first_line(exc)}") from exc
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
    raw.pop("defaults", None)
    for key in _flatten(raw):
        _check_key(key, fields, where=str(path))
        if profile and not fields[key].profile:
            raise UserError(
                f"{path}: profile sets {key}, which is not a hardware, parallelism, batch or memory key",
                hint="set it in the recipe, a --config file or KEY=VALUE instead",
            )


def _check_key(key: str, fields: dict[str, FieldInfo], *, where: str) -> None:
    if key in fields:
        return
    groups = {k.split(".")[0] for k in fields}
    if key in groups or any(k.startswith(key + ".") for k in fields):
        raise UserError(
            f"{where}: {key} is a config group, not a key", hint=f"set one of its keys, e.g. {key}.…"
        )
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "`rlkit config RECIPE` lists every key"
    raise UserError(f"{where}: unknown config key {key}", hint=hint)


def _parse_overrides(overrides: tuple[str, ...], fields: dict[str, FieldInfo]) -> list[tuple[str, Any, str]]:
    parser = OverridesParser.create()
    out = []
    for text in overrides:
        if "=" not in text:
            raise UserError(f"override {text!r} is not KEY=VALUE", hint="e.g. trainer.total_steps=7")
        try:
            (parsed,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise UserError(f"cannot parse override {text!r}: {_first_line(exc)}") from exc
        if parsed.is_add() or parsed.is_force_add() or parsed.is_delete():
            raise UserError(f"override {text!r}: only KEY=VALUE is supported", hint="drop the leading + or ~")
        key = parsed.key_or_group
        _check_key(key, fields, where="override")
        out.append((key, parsed.value(), text))
    return out


def _check_values(cfg: DictConfig, fields: dict[str, FieldInfo]) -> None:
    for key, info in fields.items():
        if not info.choices:
            continue
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if value not in info.choices:
            close = difflib.get_close_matches(str(value), info.choices, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}?" if close else "choose one of: " + ", ".join(info.choices)
            raise UserError(f"{key}={value!r} is not one of {', '.join(info.choices)}", hint=hint)


def _type_error(key: str, value: Any, fields: dict[str, FieldInfo], where: str) -> UserError:
    return UserError(
        f"{where}: {key} expects {fields[key].type_name}, got {value!r}",
        hint=f"e.g. {key}={fields[key].example}",
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
