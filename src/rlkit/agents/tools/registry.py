"""Tools by name: the built-ins, verl tools YAML files, and the per-row tool helpers.

``load_tools(spec)`` takes a list whose entries are built-in names (``calculator``, ``python``,
...) or paths to a tools YAML in verl's ``tool_config_path`` layout::

    tools:
      - class_name: rlkit.agents.tools.python.PythonTool   # or a built-in name, or a user class
        config: {timeout_s: 10, type: native}               # constructor keyword arguments
        tool_schema: {type: function, function: {...}}      # optional: overrides the tool's own

``class_name`` may also be one of verl's built-in classes that rlkit provides
(``verl.tools.sandbox_fusion_tools.SandboxFusionTool``, ...: :data:`VERL_CLASSES`), or any user
class: one with rlkit's interface (``execute`` returning a :class:`ToolResult`) is built as
``cls(**config)``; one with verl's ``BaseTool`` methods (``calc_reward``, ``execute`` returning
``(response, reward, metrics)``) as ``cls(config=config, tool_schema=schema)``, behind
:class:`~rlkit.agents.tools.verl_adapter.VerlToolAdapter`.

Rows pick and set up their tools through ``extra_info``: ``tools_kwargs`` maps a tool name to its
``create`` kwargs (verl's ``{"create_kwargs": {...}}`` nesting accepted), and ``tool_selection``
lists the subset of tools the row may use (:func:`create_kwargs`, :func:`select_tools`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from rlkit.agents.tools.base import Tool
from rlkit.agents.tools.schema import schema_problem
from rlkit.errors import UserError

# built-in name -> "module:Class"
BUILTINS: dict[str, str] = {
    "calculator": "rlkit.agents.tools.calculator:CalculatorTool",
    "python": "rlkit.agents.tools.python:PythonTool",
    "code_interpreter": "rlkit.agents.tools.python:CodeInterpreterTool",
    "retrieval": "rlkit.agents.tools.retrieval:RetrievalTool",
    "sandbox_fusion": "rlkit.agents.tools.sandbox_fusion:SandboxFusionTool",
}
# verl's class paths whose YAML entries rlkit's built-ins accept unchanged
VERL_CLASSES: dict[str, str] = {
    "verl.tools.sandbox_fusion_tools.SandboxFusionTool": "sandbox_fusion",
}
# keys of verl's ``config`` mapping that only mean something to verl's registry
_VERL_ONLY_KEYS = ("type",)


def _import_class(path: str, where: str) -> type:
    """``pkg.mod.Class`` or ``pkg.mod:Class`` -> the class; a UserError naming ``where`` otherwise."""
    module_name, _, class_name = path.replace(":", ".").rpartition(".")
    if not module_name:
        raise UserError(
            f"{where}: class_name {path!r} is not a dotted path", hint="write it as pkg.module.Class"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"{where}: cannot import {module_name!r} for class_name {path!r} ({exc})",
            hint="check the spelling, and that the module is on PYTHONPATH",
        ) from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise UserError(f"{where}: {module_name!r} has no class {class_name!r}", hint="check class_name")
    return cls


def _is_verl_style(cls: type) -> bool:
    return hasattr(cls, "calc_reward") and not hasattr(cls, "reward")


def build_tool(
    class_name: str, config: Mapping[str, Any] | None = None, schema: Any = None, where: str = "tools"
) -> Tool:
    """One tool from a YAML entry's ``class_name``, ``config`` and optional ``tool_schema``.

    Raises:
        UserError: an unknown built-in, a bad class path, a bad schema, or config keys the tool
            does not take.
    """
    if schema is not None:
        problem = schema_problem(schema)
        if problem:
            raise UserError(
                f"{where}: tool_schema is not an OpenAI function schema: {problem}",
                hint='see docs/tools.md ("type: function", function.name, function.parameters)',
            )
    kwargs = {k: v for k, v in dict(config or {}).items() if k not in _VERL_ONLY_KEYS}
    builtin = VERL_CLASSES.get(class_name, class_name)
    if builtin in BUILTINS:
        cls = _import_class(BUILTINS[builtin], where)
    elif "." in class_name or ":" in class_name:
        cls = _import_class(class_name, where)
    else:
        raise UserError(
            f"{where}: unknown tool {class_name!r}", hint=f"built-in tools: {', '.join(BUILTINS)}"
        )
    if _is_verl_style(cls):
        from rlkit.agents.tools.verl_adapter import VerlToolAdapter

        return VerlToolAdapter.build(cls, kwargs, schema, where)
    try:
        tool = cls(**kwargs, schema=schema) if schema is not None else cls(**kwargs)
    except TypeError as exc:
        raise UserError(
            f"{where}: {class_name} does not take this config ({exc})",
            hint="see docs/tools.md for each tool's config keys",
        ) from exc
    if not isinstance(tool, Tool):
        raise UserError(
            f"{where}: {class_name} is not a tool (no name/schema/create/execute/reward/release)",
            hint="subclass rlkit.agents.tools.StatefulTool or verl's BaseTool",
        )
    return tool


def find_tools_file(entry: str) -> Path:
    """``entry`` as a path, else the tools YAML shipped in the package's recipes (``tools/NAME.yaml``)."""
    path = Path(entry)
    if path.is_file():
        return path
    from rlkit.registry import recipes_dir

    relative = Path(*path.parts[1:]) if path.parts[:1] == ("recipes",) else path
    shipped = recipes_dir() / relative
    return shipped if shipped.is_file() else path


def _yaml_tools(path: Path) -> list[Tool]:
    """The tools of one verl-layout tools YAML file."""
    if not path.is_file():
        raise UserError(
            f"tools file {str(path)!r} does not exist", hint="give a path to a tools YAML, or a built-in name"
        )
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"tools file {str(path)!r} is not valid YAML ({exc})".replace("\n", " ")) from exc
    entries = document.get("tools") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise UserError(
            f"tools file {str(path)!r} has no 'tools:' list", hint="see docs/tools.md for the layout"
        )
    tools = []
    for i, entry in enumerate(entries):
        where = f"{path}: tools[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
            raise UserError(
                f"{where} has no class_name",
                hint="each entry needs class_name (and optional config, tool_schema)",
            )
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise UserError(f"{where}: config must be a mapping")
        tools.append(build_tool(entry["class_name"], config, entry.get("tool_schema"), where))
    return tools


def load_tools(spec: str | Iterable[str] | None) -> dict[str, Tool]:
    """The tools named by ``spec``: built-in names and/or tools YAML paths (a string may list several, comma-separated).

    Raises:
        UserError: an unknown name, a missing or malformed file, a bad class path or schema, or
            two tools with the same name.
    """
    if spec is None:
        return {}
    entries = (
        [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    )
    tools: dict[str, Tool] = {}
    for entry in filter(None, entries):
        is_file = entry.endswith((".yaml", ".yml")) or "/" in entry
        found = (
            _yaml_tools(find_tools_file(entry)) if is_file else [build_tool(entry, where=f"tool {entry!r}")]
        )
        for tool in found:
            if tool.name in tools:
                raise UserError(
                    f"two tools are named {tool.name!r} ({entry})",
                    hint="give one of them another name in tool_schema",
                )
            tools[tool.name] = tool
    return tools


def create_kwargs(extra_info: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """The ``create`` kwargs of tool ``name`` for one row (``extra_info.tools_kwargs[name]``).

    verl nests them as ``{"create_kwargs": {...}, "execute_kwargs": ...}``; that layout is
    unwrapped, and a flat mapping is taken as the create kwargs themselves.
    """
    per_tool = ((extra_info or {}).get("tools_kwargs") or {}).get(name) or {}
    if not isinstance(per_tool, Mapping):
        raise UserError(f"extra_info.tools_kwargs[{name!r}] must be a mapping, got {type(per_tool).__name__}")
    if "create_kwargs" in per_tool:
        return dict(per_tool["create_kwargs"] or {})
    return {
        k: v
        for k, v in per_tool.items()
        if k not in ("execute_kwargs", "calc_reward_kwargs", "release_kwargs")
    }


def select_tools(tools: Mapping[str, Tool], extra_info: Mapping[str, Any] | None) -> dict[str, Tool]:
    """The tools one row may use: ``extra_info.tool_selection`` (names) or all of them.

    Raises:
        UserError: the row selects a tool that is not loaded.
    """
    selection = (extra_info or {}).get("tool_selection")
    if selection is None:
        return dict(tools)
    names = [selection] if isinstance(selection, str) else [str(n) for n in selection]
    unknown = [n for n in names if n not in tools]
    if unknown:
        loaded = ", ".join(tools) or "none"
        raise UserError(
            f"extra_info.tool_selection names unknown tool(s) {', '.join(map(repr, unknown))}",
            hint=f"loaded tools: {loaded} (rollout.multi_turn tools)",
        )
    return {n: tools[n] for n in names}
