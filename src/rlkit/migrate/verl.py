"""``rlkit migrate verl``: a verl launch script or YAML config -> the rlkit command, and what did not map.

Every verl key goes through the one table of :mod:`rlkit.migrate.verl_keys`; each ends up as an
rlkit override, as "not needed" (rlkit always does it), as "already the recipe's value", or as "not
mapped" with the reason. The command is composed with rlkit's own config before it is printed, so a
mapped key that this rlkit does not have (or a value it refuses) is reported, never printed.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlkit.config.fields import schema_fields
from rlkit.errors import UserError
from rlkit.migrate.shell import parse_script
from rlkit.migrate.verl_keys import NotMapped, canonical, rule_for

#: verl's ``algorithm.adv_estimator`` -> the rlkit recipe (verl's default estimator is gae).
RECIPES = {
    "gae": "ppo",
    "grpo": "grpo",
    "rloo": "rloo",
    "reinforce_plus_plus": "reinforce_plus_plus",
    "reinforce_plus_plus_baseline": "reinforce_plus_plus_baseline",
    "remax": "remax",
    "opo": "opo",
    "gpg": "gpg",
    "gdpo": "gdpo",
    "optimal_token_baseline": "otb",
}
#: estimators rlkit runs through ``algo.advantage`` on the grpo recipe
_ON_GRPO = ("grpo_passk",)


@dataclass
class Migration:
    """The result: ``rlkit train RECIPE KEY=VALUE ...`` and every verl key that is not in it, with why."""

    source: str
    recipe: str = "ppo"
    overrides: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # rlkit key -> the verl key it came from
    not_mapped: list[tuple[str, str]] = field(default_factory=list)  # ("verl.key=value", why)
    not_needed: list[tuple[str, str]] = field(default_factory=list)
    recipe_default: list[tuple[str, str]] = field(default_factory=list)
    compose_error: str | None = None

    def command(self) -> str:
        parts = [f"rlkit train {self.recipe}"] + [f"{k}={render(v)}" for k, v in self.overrides.items()]
        return " \\\n    ".join(parts)


def read_verl(path: Path) -> tuple[str | None, list[tuple[str, Any]], list[str]]:
    """``(entry module, [(verl key, value)], other arguments)`` of a verl YAML or launch script."""
    if not path.is_file():
        raise UserError(f"no such file: {path}", hint="pass a verl launch script (.sh) or a verl YAML config")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(data, dict):
            raise UserError(
                f"{path}: a verl config is a YAML mapping of groups",
                hint="e.g. data: {train_batch_size: 256}",
            )
        extra = [f"defaults: {data['defaults']}"] if "defaults" in data else []
        return None, _flatten({k: v for k, v in data.items() if k not in ("defaults", "hydra")}), extra
    script = parse_script(text, str(path))
    return script.entry, [(k, parse_value(v)) for k, v in script.overrides], script.other_args


def _flatten(node: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += _flatten(value, dotted + ".")
        else:
            out.append((dotted, value))
    return out


def parse_value(text: str) -> Any:
    """A command-line value as verl's Hydra reads it: bools, numbers (``1e-6`` too), lists, null, text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.startswith("[") and text.endswith("]"):
        try:
            return [parse_value(str(v)) if isinstance(v, str) else v for v in yaml.safe_load(text)]
        except yaml.YAMLError:
            return text
    return text


def render(value: Any) -> str:
    """A value as an rlkit ``KEY=VALUE`` override, quoted for the shell (``$VAR`` left to expand)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value))
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[\w./:@%+-]+", text):
        return text
    if "$" in text and '"' not in text:
        return f'"{text}"'
    return shlex.quote(text)


def _recipe(entry: str | None, items: dict[str, Any], migration: Migration) -> None:
    """Pick the recipe from ``algorithm.adv_estimator`` (and DAPO's entry point or filter)."""
    estimator = str(items.get("algorithm.adv_estimator", "gae"))
    dapo = (entry or "").endswith("main_dapo") or bool(items.get("algorithm.filter_groups.enable"))
    if estimator in RECIPES:
        migration.recipe = RECIPES[estimator]
    elif estimator in _ON_GRPO:
        migration.recipe = "grpo"
        migration.overrides["algo.advantage"] = estimator
        migration.origin["algo.advantage"] = "algorithm.adv_estimator"
    else:
        migration.recipe = "grpo"
        migration.not_mapped.append(
            (
                f"algorithm.adv_estimator={estimator}",
                "no such estimator in rlkit (`rlkit recipes` lists them)",
            )
        )
    if dapo and migration.recipe == "grpo":
        migration.recipe = "dapo"


def migrate(path: Path) -> Migration:
    """Convert the verl script or YAML at ``path``."""
    entry, pairs, other = read_verl(path)
    migration = Migration(str(path))
    items = {canonical(k): v for k, v in pairs}
    _recipe(entry, items, migration)
    for arg in other:
        migration.not_mapped.append(
            (
                arg,
                "a verl config file: convert it with `rlkit migrate verl FILE.yaml`"
                if "config" in arg
                else "not a key=value override",
            )
        )
    known = schema_fields()
    for key, value in pairs:
        _one(key, value, migration, known)
    _drop_recipe_defaults(migration)
    return migration


def _one(key: str, value: Any, migration: Migration, known: dict[str, Any]) -> None:
    shown = f"{key}={render(value)}"
    rule = rule_for(key)
    if canonical(key) == "algorithm.adv_estimator":
        return
    if rule is None:
        migration.not_mapped.append((shown, "no rlkit equivalent known (see docs/coming-from-verl.md)"))
        return
    if rule.kind == "same":
        migration.not_needed.append((shown, rule.note))
        return
    if rule.kind == "none":
        migration.not_mapped.append((shown, rule.note))
        return
    try:
        pairs = rule.convert(value) if rule.convert else [(rule.rlkit, _as_list(rule.rlkit, value, known))]
    except NotMapped as exc:
        migration.not_mapped.append((shown, str(exc)))
        return
    for target, _ in pairs:
        if target not in known:
            migration.not_mapped.append((shown, f"this rlkit has no {target} (a newer release may)"))
            return
    for target, converted in pairs:
        if target in migration.overrides:  # two verl keys, one rlkit key (actor and critic checkpointing)
            first = migration.origin[target]
            if _same(migration.overrides[target], converted):
                migration.not_needed.append((shown, f"{target} already comes from {first}"))
            else:
                migration.not_mapped.append((shown, f"conflicts with {first}: rlkit has one {target}"))
            return
    for target, converted in pairs:
        migration.overrides[target] = converted
        migration.origin[target] = key


def _as_list(target: str, value: Any, known: dict[str, Any]) -> Any:
    """A single value for a list key (``data.train_files=a.parquet``) becomes a one-element list."""
    info = known.get(target)
    if info is not None and "list" in str(getattr(info, "type_name", "")) and not isinstance(value, list):
        return [value]
    return value


_SHELL_VAR = re.compile(r"\$\{?(\w+)\}?")


def _unquoted(value: Any) -> str:
    """``value`` as the shell would pass it, its variables as bare names (``$HOME`` -> ``HOME``)."""
    return _SHELL_VAR.sub(r"\1", render(value).strip("'"))


def _drop_recipe_defaults(migration: Migration) -> None:
    """Leave out overrides equal to the recipe's own value; compose the rest to check them."""
    from omegaconf import OmegaConf

    from rlkit.config.load import load_config

    base = load_config(migration.recipe, profile=None, config_file=None, overrides=[], command="train")
    for key in list(migration.overrides):
        value = migration.overrides[key]
        current = OmegaConf.select(base, key, throw_on_missing=False)
        current = OmegaConf.to_container(current) if OmegaConf.is_config(current) else current
        if _same(current, value):
            del migration.overrides[key]
            migration.recipe_default.append(
                (
                    f"{migration.origin[key]}={render(value)}",
                    f"{key} is {render(current)} in the {migration.recipe} recipe",
                )
            )
    # shell variables left for the user's shell ($HOME, ${DATA}) would read as OmegaConf interpolations
    overrides = [f"{k}={_unquoted(v)}" for k, v in migration.overrides.items()]
    try:
        load_config(migration.recipe, profile=None, config_file=None, overrides=overrides, command="train")
    except UserError as exc:
        migration.compose_error = exc.message


def _same(current: Any, value: Any) -> bool:
    if isinstance(current, bool) or isinstance(value, bool):
        return current is value or current == value and type(current) is type(value)
    if isinstance(current, (int, float)) and isinstance(value, (int, float)):
        return float(current) == float(value)
    return bool(current == value)


def report_lines(migration: Migration) -> list[str]:
    """The printed result: a comment header, the command, and the keys left out with their reasons."""
    total = (
        len(migration.overrides)
        + len(migration.not_mapped)
        + len(migration.not_needed)
        + len(migration.recipe_default)
    )
    lines = [
        f"# from verl: {migration.source} ({total} settings: {len(migration.overrides)} rlkit overrides, "
        f"{len(migration.recipe_default)} already the recipe's value, {len(migration.not_needed)} not needed, "
        f"{len(migration.not_mapped)} not mapped)",
        migration.command(),
    ]
    if migration.compose_error:
        lines.append(f"# warning: rlkit refuses this command as it is: {migration.compose_error}")
    for title, rows in (
        ("not mapped: set these by hand, or drop them", migration.not_mapped),
        ("not needed: rlkit always does this", migration.not_needed),
        ("already the recipe's value", migration.recipe_default),
    ):
        if rows:
            lines.append(f"# {title} ({len(rows)}):")
            lines += [f"#   {key}  -- {why}" for key, why in rows]
    return lines
