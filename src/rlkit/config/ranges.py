"""Valid ranges of numeric keys (declared with ``keys.bounded``): the check and its one-line refusal.

Every numeric key of the schema declares its range once; :func:`check_ranges` runs at compose time,
so ``rollout.top_p=2`` fails before anything starts with
``rollout.top_p=2 is out of range: it must be in (0, 1] (e.g. rollout.top_p=1)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from rlkit.config.fields import FieldInfo
from rlkit.errors import UserError

_LOWER = {"ge": ">=", "gt": ">"}
_UPPER = {"le": "<=", "lt": "<"}


def fmt(value: Any) -> str:
    """A number as a user would type it: ``2.0`` -> ``2``, ``1e-06`` stays, lists as ``[a,b]``."""
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(fmt(v) for v in value) + "]"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def in_range(value: float, info: FieldInfo) -> bool:
    """``value`` lies within ``info.bounds`` or is one of ``info.allow`` (NaN never does)."""
    if value in info.allow:
        return True
    if isinstance(value, float) and math.isnan(value):
        return False
    b = info.bounds
    return (
        ("ge" not in b or value >= b["ge"])
        and ("gt" not in b or value > b["gt"])
        and ("le" not in b or value <= b["le"])
        and ("lt" not in b or value < b["lt"])
    )


def describe_range(info: FieldInfo) -> str:
    """``in (0, 1]``, ``>= 1``, ``-1 or >= 1``: the valid values of a bounded key, in words."""
    b = info.bounds
    low = next(((k, b[k]) for k in ("ge", "gt") if k in b), None)
    high = next(((k, b[k]) for k in ("le", "lt") if k in b), None)
    if low and high:
        text = "in " + ("[" if low[0] == "ge" else "(") + f"{fmt(low[1])}, {fmt(high[1])}"
        text += "]" if high[0] == "le" else ")"
    elif low:
        text = f"{_LOWER[low[0]]} {fmt(low[1])}"
    elif high:
        text = f"{_UPPER[high[0]]} {fmt(high[1])}"
    else:
        text = "any number"
    if info.allow:
        text = " or ".join(fmt(a) for a in info.allow) + " or " + text
    return text


def example_value(info: FieldInfo) -> str:
    """A valid value to show in a hint: the default when it is valid, else one inside the range."""
    default = info.default
    if isinstance(default, list) and default and all(in_range(v, info) for v in default):
        return fmt(default)
    if isinstance(default, (int, float)) and not isinstance(default, bool) and in_range(default, info):
        return fmt(default)
    b = info.bounds
    if "le" in b:
        return fmt(b["le"])
    if "ge" in b:
        return fmt(b["ge"])
    if "gt" in b and "lt" in b:
        return fmt((b["gt"] + b["lt"]) / 2)
    if "gt" in b:
        return fmt(b["gt"] + 1)
    return fmt(b.get("lt", 0) - 1)


def _elements(value: Any) -> Iterable[Any]:
    return value if isinstance(value, (list, tuple, ListConfig)) else [value]


def check_ranges(cfg: DictConfig, fields: dict[str, FieldInfo]) -> None:
    """Refuse the first bounded key whose value (or any element of it) is out of its range.

    Raises:
        UserError: One line naming the key, the value, the range and an example.
    """
    for key, info in fields.items():
        if not info.bounds and not info.allow:
            continue
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if value is None:
            continue
        bad = [v for v in _elements(value) if v is not None and not in_range(v, info)]
        if bad:
            subject = "each element" if isinstance(value, ListConfig) else "it"
            raise UserError(
                f"{key}={fmt(value)} is out of range: {subject} must be {describe_range(info)}",
                hint=f"e.g. {key}={example_value(info)}",
            )
