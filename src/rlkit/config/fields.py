"""Introspection of the schema: every dotted key with its type, default, choices and docstring.

Used to validate keys (with did-you-mean), to check profiles against the allowed keys, and to
generate ``rlkit config --explain`` and ``docs/config.md``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from rlkit.config import schema


@dataclass(frozen=True)
class FieldInfo:
    """One leaf key of the schema."""

    key: str
    type_name: str
    default: Any
    doc: str
    profile: bool
    choices: tuple[str, ...]
    bounds: dict[str, float] = dataclasses.field(default_factory=dict)
    """The valid range of a numeric key: any of ``ge``, ``gt``, ``le``, ``lt`` (see ``keys.bounded``)."""
    allow: tuple[float, ...] = ()
    """Special values accepted outside ``bounds`` (``rollout.top_k=-1``: off)."""
    unbounded: str = ""
    """Why a numeric key has no range (``keys.unbounded``); empty for the others."""

    @property
    def numeric(self) -> bool:
        """The key holds a number, or a list of numbers (ranges apply element-wise)."""
        names = self.type_name.replace("list[", "").replace("]", "").split(" or ")
        return any(n in ("int", "float") for n in names)

    @property
    def example(self) -> str:
        if self.choices:
            return self.choices[0]
        examples = {"int": "1", "float": "0.5", "bool": "true", "list": "[a,b]"}
        return examples.get(self.type_name.split("[")[0].split(" ")[0], "VALUE")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp)
        return f"list[{_type_name(arg)}]"
    if origin is dict:
        return "dict"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


@cache
def _attribute_docs(cls: type) -> dict[str, str]:
    """Docstrings written as a string literal on the line after each field."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _walk(cls: type, prefix: str) -> list[FieldInfo]:
    hints = typing.get_type_hints(cls)
    docs = _attribute_docs(cls)
    out: list[FieldInfo] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(_walk(tp, f"{prefix}{f.name}."))  # type: ignore[arg-type]
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(
            FieldInfo(
                key=f"{prefix}{f.name}",
                type_name=_type_name(tp),
                default=default,
                doc=docs.get(f.name, ""),
                profile=bool(f.metadata.get("profile")),
                choices=tuple(f.metadata.get("choices", ())),
                bounds=dict(f.metadata.get("bounds", {})),
                allow=tuple(f.metadata.get("allow", ())),
                unbounded=str(f.metadata.get("unbounded", "")),
            )
        )
    return out


@cache
def schema_fields() -> dict[str, FieldInfo]:
    """Every leaf key of :class:`~rlkit.config.schema.RlkitConfig`, in declaration order."""
    return {info.key: info for info in _walk(schema.RlkitConfig, "")}
