"""Compose a run's config: recipe, then profile, then ``--config`` file, then ``KEY=VALUE`` overrides.

Hydra's compose API loads the recipe YAML (whose defaults list names the schema, or a parent recipe)
with the hardware profile appended as a ``profile@_global_`` group; the ``--config`` file and the
overrides (parsed with Hydra's override grammar) are merged on top, in that order. Every key is
checked against the schema before merging so that a typo fails at once, naming the file it came from
and the closest real key. A scalar given for a list key is a one-element list (verl's
``data.train_files=a.parquet``). The composed values are then checked against the schema's choices
and ranges (:mod:`rlkit.config.ranges`) and the rules between keys (:mod:`rlkit.config.rules`), and
:mod:`rlkit.config.provenance` records where each value came from.
"""

from __future__ import annotations

import contextlib
import difflib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlkit.config import provenance
from rlkit.config.fields import FieldInfo, schema_fields
from rlkit.config.provenance import flatten_keys
from rlkit.config.ranges import check_ranges
from rlkit.config.rules import check_rules
from rlkit.config.schema import RlkitConfig
from rlkit.errors import UserError

SCHEMA_NAME = "rlkit_schema"
BUILTIN_MODEL_PREFIX = "builtin:"


def _builtin_or(builtin: Any, *other: Any, _node_: Any, _root_: DictConfig) -> Any:
    """``${builtin_or:A,B}`` in a recipe: A when ``model.path`` is a built-in tiny model, else B.

    ``${builtin_or:A}`` leaves B to the schema: a real model gets the key's schema default, so the
    real-model values are declared once (``schema.py``) and a recipe only names the embedded
    default's. Recipes use it for the few values (learning rate, prompt and response lengths) that
    the tiny model needs and a real model must not get; an explicit value set by the user replaces
    the whole expression. ``rlkit config RECIPE --sources`` shows which branch was taken.
    """
    if str(_root_.model.path).startswith(BUILTIN_MODEL_PREFIX):
        return builtin
    if other:
        return other[0]
    return schema_fields()[_node_._get_full_key(None)].default


if not OmegaConf.has_resolver("builtin_or"):
    OmegaConf.register_new_resolver("builtin_or", _builtin_or)


@dataclass(frozen=True)
class Sources:
    """Where a run's values come from, in the order they are applied."""

    recipe_file: Path
    profile_file: Path | None = None
    config_file: Path | None = None
    overrides: tuple[str, ...] = ()
    profile_name: str | None = None
    """What ``hardware.profile`` records: the profile's name (default: the file's stem)."""
    profile_auto: bool = False
    """The profile was picked by rlkit (no ``--profile``, no accelerator found)."""
    command: str = "train"
    """The command the config is for (``train`` or ``sft``): selects the rules between keys."""


def compose_config(sources: Sources, recipe_name: str, origins: dict[str, str] | None = None) -> DictConfig:
    """Compose and validate; returns the typed OmegaConf config (schema-backed, interpolations kept).

    Args:
        sources: What to compose, in order.
        recipe_name: Recorded as ``recipe``.
        origins: When given, filled with where each key's value came from (dotted key -> source).

    Raises:
        UserError: An unknown key, a wrong type, a bad choice, a value out of range or a broken
            rule between keys (one line each).
    """
    fields = schema_fields()
    _check_yaml_keys(sources.recipe_file, fields, what="recipe")
    if sources.profile_file is not None:
        _check_yaml_keys(sources.profile_file, fields, what="profile", profile=True)
    cfg = _hydra_compose(sources, fields)
    if sources.config_file is not None:
        _check_yaml_keys(sources.config_file, fields, what="config file")
        user = OmegaConf.load(sources.config_file)
        _merge(cfg, _lists_from_scalars(user, fields), str(sources.config_file))
    for key, value, text in _parse_overrides(sources.overrides, fields):
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as exc:
            raise _type_error(key, value, fields, f"override {text!r}") from exc
    cfg.recipe = recipe_name
    cfg.hardware.profile = _profile_label(sources)
    try:
        _check_values(cfg, fields)
        check_ranges(cfg, fields)
        check_rules(cfg, sources.command)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise UserError(
            f"{key}: cannot resolve its value: {_first_line(exc)}", hint="check the ${...} interpolations"
        ) from exc
    if origins is not None:
        origins.update(provenance.origins(sources, cfg, fields))
    return cfg


def _profile_label(sources: Sources) -> str | None:
    if sources.profile_file is None:
        return None
    return sources.profile_name or sources.profile_file.stem


def _lists_from_scalars(node: Any, fields: dict[str, FieldInfo]) -> Any:
    """``node`` (a YAML mapping) with every scalar set for a ``list[...]`` key made a one-element list."""
    for key, value in _scalars_for_lists(node, fields).items():
        OmegaConf.update(node, key, [value], merge=False)
    return node


def _scalars_for_lists(node: Any, fields: dict[str, FieldInfo]) -> dict[str, Any]:
    """The keys of ``node`` that set a scalar for a ``list[...]`` key, with their raw values."""
    raw = OmegaConf.to_container(node, resolve=False)
    assert isinstance(raw, dict)
    return {
        key: value
        for key, value in flatten_keys(raw).items()
        if key in fields
        and fields[key].type_name.startswith("list")
        and value is not None
        and not _is_list(value)
    }


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, ListConfig))


def to_dataclass(cfg: DictConfig) -> RlkitConfig:
    """Resolve interpolations and build the :class:`RlkitConfig` instance the trainer uses."""
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise UserError(f"config cannot be resolved: {exc}", hint="check ${...} interpolations") from exc
    assert isinstance(obj, RlkitConfig)
    return obj


def _hydra_compose(sources: Sources, fields: dict[str, FieldInfo]) -> DictConfig:
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=RlkitConfig)
    overrides = []
    if sources.profile_file is not None:
        profile = _lists_from_scalars(OmegaConf.load(sources.profile_file), fields)
        store.store(group="profile", name=sources.profile_file.stem, node=profile)
        overrides.append(f"+profile@_global_={sources.profile_file.stem}")
    GlobalHydra.instance().clear()
    try:
        with (
            _recipe_dir(sources.recipe_file, fields) as folder,
            initialize_config_dir(config_dir=str(folder), version_base=None),
        ):
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


@contextlib.contextmanager
def _recipe_dir(recipe_file: Path, fields: dict[str, FieldInfo]) -> Iterator[Path]:
    """The recipe's folder; a temporary copy of its chain when a file gives a scalar for a list key."""
    loaded = {path: OmegaConf.load(path) for path in provenance.recipe_chain(recipe_file)}
    if not any(_scalars_for_lists(node, fields) for node in loaded.values()):
        yield recipe_file.parent.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="rlkit-recipe-") as tmp:
        for path, node in loaded.items():
            OmegaConf.save(_lists_from_scalars(node, fields), Path(tmp) / path.name)
        yield Path(tmp)


def _merge(cfg: DictConfig, other: Any, where: str) -> None:
    try:
        merged = OmegaConf.merge(cfg, other)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise UserError(f"{where}: bad value for {key}: {_first_line(exc)}") from exc
    assert isinstance(merged, DictConfig)
    for k in list(cfg.keys()):
        cfg[k] = merged[k]


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
    for key in flatten_keys(raw):
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
        if key == "hardware.profile":
            raise UserError(
                "hardware.profile records the profile rlkit applied; it is not set by KEY=VALUE",
                hint="choose a profile with --profile NAME (see `rlkit profiles`)",
            )
        value = parsed.value()
        if fields[key].type_name.startswith("list") and value is not None and not _is_list(value):
            value = [value]  # verl's data.train_files=a.parquet
        out.append((key, value, text))
    return out


def _check_values(cfg: DictConfig, fields: dict[str, FieldInfo]) -> None:
    for key, info in fields.items():
        if not info.choices:
            continue
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        for item in value if _is_list(value) else [value]:
            if item not in info.choices:
                close = difflib.get_close_matches(str(item), info.choices, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]}?" if close else "choose one of: " + ", ".join(info.choices)
                where = f"{key}: {item!r}" if _is_list(value) else f"{key}={item!r}"
                raise UserError(f"{where} is not one of {', '.join(info.choices)}", hint=hint)


def _type_error(key: str, value: Any, fields: dict[str, FieldInfo], where: str) -> UserError:
    return UserError(
        f"{where}: {key} expects {fields[key].type_name}, got {value!r}",
        hint=f"e.g. {key}={fields[key].example}",
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
