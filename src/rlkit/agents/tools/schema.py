"""OpenAI function-tool schemas: inferred from a Python function, checked, and used to check calls.

Three jobs, all over the small JSON-schema subset that function tools use (``type``, ``enum``,
``items``, ``properties``, ``required``, ``description``, ``default``):

- :func:`infer_schema` builds ``{"type": "function", "function": {...}}`` from a function's type
  hints and its Google docstring (the first paragraph is the description, the ``Args:`` section
  describes each parameter; a parameter with a default is not required).
- :func:`schema_problem` says what is wrong with a schema a user wrote (``None`` when it is fine).
- :func:`argument_problem` says what is wrong with the arguments a model sent (missing, unknown,
  wrong type, not one of the choices), as the one-line error the model reads back.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_PYTHON_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Yields|Raises|Example|Examples|Note|Notes):\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def json_type(annotation: Any) -> dict[str, Any]:
    """The JSON schema of one Python annotation (``Optional``, ``list``, ``Literal`` included).

    Raises:
        TypeError: an annotation with no JSON counterpart (a class, a callable, ...).
    """
    if annotation is Any or annotation is inspect.Parameter.empty:
        return {}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return json_type(rest[0])
        return {"anyOf": [json_type(a) for a in rest]}
    if origin is Literal:
        kinds = {_JSON_TYPES.get(type(v), "string") for v in args}
        out: dict[str, Any] = {"enum": list(args)}
        if len(kinds) == 1:
            out["type"] = kinds.pop()
        return out
    if annotation in (list, tuple, set) or origin in (list, tuple, set, typing.Sequence):
        out = {"type": "array"}
        if args and args[0] is not Ellipsis:
            out["items"] = json_type(args[0])
        return out
    if annotation is dict or origin is dict:
        return {"type": "object"}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    raise TypeError(f"no JSON type for the annotation {annotation!r}")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """A Google docstring's description (first paragraph) and its ``Args:`` descriptions."""
    lines = inspect.cleandoc(doc or "").splitlines()
    description: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            break
        description.append(line.strip())
    args: dict[str, str] = {}
    in_args, current, indent = False, None, None
    for line in lines:
        stripped = line.strip()
        if _SECTION.match(stripped):
            in_args, current = stripped.rstrip(":") in ("Args", "Arguments", "Parameters"), None
            continue
        if not in_args or not stripped:
            continue
        this_indent = len(line) - len(line.lstrip())
        match = _ARG_LINE.match(stripped)
        if match and (indent is None or this_indent <= indent):
            indent, current = this_indent, match.group(1).lstrip("*")
            args[current] = match.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {stripped}".strip()
    return " ".join(description), args


def infer_schema(
    fn: Callable[..., Any], name: str | None = None, description: str | None = None
) -> dict[str, Any]:
    """The OpenAI function-tool schema of ``fn`` (type hints + Google docstring).

    Raises:
        TypeError: a parameter without a JSON counterpart, or ``*args`` / ``**kwargs``.
    """
    hints = typing.get_type_hints(fn)
    doc_description, arg_docs = parse_docstring(inspect.getdoc(fn))
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"{fn.__name__}: *args / **kwargs cannot be described to a model")
        prop = json_type(hints.get(param.name, inspect.Parameter.empty))
        if param.name in arg_docs:
            prop["description"] = arg_docs[param.name]
        if param.default is param.empty:
            required.append(param.name)
        elif param.default is None or isinstance(param.default, (str, int, float, bool, list)):
            prop["default"] = param.default
        properties[param.name] = prop
    return {
        "type": "function",
        "function": {
            "name": name or fn.__name__,
            "description": description if description is not None else doc_description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


def schema_problem(schema: Any) -> str | None:
    """What makes ``schema`` not an OpenAI function-tool schema; ``None`` when it is one."""
    if not isinstance(schema, dict) or schema.get("type") != "function":
        return 'it must be a mapping with type: "function"'
    function = schema.get("function")
    if not isinstance(function, dict):
        return "it has no 'function' mapping"
    if not isinstance(function.get("name"), str) or not re.fullmatch(
        r"[A-Za-z0-9_.-]{1,64}", function["name"]
    ):
        return "function.name must be 1-64 letters, digits, '_', '.' or '-'"
    if "description" in function and not isinstance(function["description"], str):
        return "function.description must be a string"
    params = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict) or params.get("type") != "object":
        return 'function.parameters must be a mapping with type: "object"'
    props = params.get("properties", {})
    if not isinstance(props, dict) or not all(isinstance(p, dict) for p in props.values()):
        return "function.parameters.properties must map each name to a schema"
    required = params.get("required", [])
    if not isinstance(required, list) or any(r not in props for r in required):
        return "function.parameters.required must list names from properties"
    return None


def _value_problem(value: Any, schema: dict[str, Any], where: str) -> str | None:
    if "anyOf" in schema:
        if all(_value_problem(value, s, where) for s in schema["anyOf"]):
            return f"{where} has the wrong type ({type(value).__name__})"
        return None
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(repr(c) for c in schema["enum"])
        return f"{where} must be one of {choices}, got {value!r}"
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if value is None and "default" in schema and schema["default"] is None:
        return None
    if kinds and not any(_PYTHON_CHECKS.get(k, lambda v: True)(value) for k in kinds):
        return f"{where} must be {' or '.join(kinds)}, got {type(value).__name__} {value!r:.40}"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problem = _value_problem(item, schema["items"], f"{where}[{i}]")
            if problem:
                return problem
    return None


def argument_problem(schema: dict[str, Any], arguments: Any) -> str | None:
    """What is wrong with a model's ``arguments`` for the tool ``schema``; ``None`` when they fit."""
    params = schema["function"].get("parameters", {})
    props: dict[str, Any] = params.get("properties", {})
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    missing = [r for r in params.get("required", []) if r not in arguments]
    if missing:
        return f"missing argument(s): {', '.join(missing)}"
    unknown = [a for a in arguments if a not in props]
    if unknown and params.get("additionalProperties", False) is not True:
        known = ", ".join(props) or "none"
        return f"unknown argument(s): {', '.join(unknown)} (arguments: {known})"
    for key, value in arguments.items():
        if key in props:
            problem = _value_problem(value, props[key], f"argument {key!r}")
            if problem:
                return problem
    return None
