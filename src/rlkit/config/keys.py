"""Field constructors of the config schema: each declares a key's default with its choices or range.

The schema's dataclasses (``rlkit.config.schema`` and the groups it imports) declare every key with
one of these; ``rlkit.config.fields`` reads the metadata back to validate values and write the docs.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


def profile_key(default: Any = None) -> Any:
    """A field that hardware profiles may set (hardware, parallelism, batch and memory keys)."""
    return field(default=default, metadata={"profile": True})


def choice(default: str, *others: str, profile: bool = False) -> Any:
    """A string field restricted to ``default`` and ``others``; a bad value fails at compose time."""
    return field(default=default, metadata={"choices": (default, *others), "profile": profile})


def bounded(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    allow: tuple[float, ...] = (),
    profile: bool = False,
) -> Any:
    """A numeric field with its valid range (``ge``/``gt`` below, ``le``/``lt`` above), declared once.

    A value outside the range fails at compose time with one line naming the key, the value and the
    range. ``allow`` lists special values accepted outside the range (``rollout.top_k=-1``: off).
    ``None`` stays allowed where the field's type admits it (``int | None``). For a list field
    (``list[float]``) the range applies to every element.
    """
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"bounds": bounds, "allow": tuple(allow), "profile": profile}
    if isinstance(default, list):
        items = list(default)
        return field(default_factory=lambda: list(items), metadata=metadata)
    return field(default=default, metadata=metadata)


def choice_list(default: list[str], choices: tuple[str, ...]) -> Any:
    """A list-of-strings field whose every element must be one of ``choices``."""
    items = list(default)
    return field(default_factory=lambda: list(items), metadata={"choices": tuple(choices)})


def unbounded(default: Any, why: str) -> Any:
    """A numeric field that is valid at any value; ``why`` says so (the schema test requires it)."""
    return field(default=default, metadata={"unbounded": why})
