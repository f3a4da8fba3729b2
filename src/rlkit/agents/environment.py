"""TRL-style environments as tools: one instance per trajectory, public methods become tools.

An environment class (TRL's ``environment_factory`` shape) is built once per trajectory with no
arguments; ``reset(**kwargs)`` starts it (``kwargs``: the row's ``extra_info.env_kwargs``); each
public method other than ``reset`` / ``get_reward`` is a tool whose schema comes from its type
hints and docstring; an optional ``get_reward()`` is the trajectory's reward. A method's return
value is the tool message; an exception it raises becomes the error shown to the model.
"""

from __future__ import annotations

import inspect
from typing import Any, get_type_hints

from rlkit.agents.tools.base import ToolResult

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array", dict: "object"}
_RESERVED = {"reset", "get_reward"}


def method_schema(method: Any) -> dict[str, Any]:
    """The OpenAI function schema of a bound method (types from its hints, text from its docstring)."""
    hints = get_type_hints(method)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in inspect.signature(method).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        hint = hints.get(name, str)
        properties[name] = {"type": _JSON_TYPES.get(getattr(hint, "__origin__", hint), "string")}
        if param.default is param.empty:
            required.append(name)
    doc = inspect.getdoc(method) or ""
    return {
        "type": "function",
        "function": {
            "name": method.__name__,
            "description": doc.split("\n\n")[0].replace("\n", " "),
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


class _Instances:
    """The environment objects of live trajectories, shared by that environment's tools."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.envs: dict[str, Any] = {}

    async def get(self, instance_id: str, **kwargs: Any) -> Any:
        if instance_id not in self.envs:
            env = self.factory()
            self.envs[instance_id] = env
            reset = getattr(env, "reset", None)
            if callable(reset):
                await _maybe_await(reset(**kwargs))
        return self.envs[instance_id]


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class EnvironmentTool:
    """One public method of an environment class, as a :class:`~rlkit.agents.tools.base.Tool`."""

    def __init__(
        self, instances: _Instances, method_name: str, schema: dict[str, Any], owns_reward: bool
    ) -> None:
        self._instances = instances
        self._method = method_name
        self.name = method_name
        self.schema = schema
        self._owns_reward = owns_reward  # the environment's reward is counted once, by one tool

    async def create(self, instance_id: str, **kwargs: Any) -> None:
        await self._instances.get(instance_id, **kwargs)

    async def execute(self, instance_id: str, arguments: dict[str, Any]) -> ToolResult:
        env = await self._instances.get(instance_id)
        try:
            value = await _maybe_await(getattr(env, self._method)(**arguments))
        except Exception as exc:  # the model's call failed: it sees why
            return ToolResult(text="", error=f"{type(exc).__name__}: {exc}")
        return ToolResult(text="" if value is None else str(value))

    async def reward(self, instance_id: str) -> float:
        env = self._instances.envs.get(instance_id)
        get_reward = getattr(env, "get_reward", None)
        if not self._owns_reward or not callable(get_reward):
            return 0.0
        return float(await _maybe_await(get_reward()))

    async def release(self, instance_id: str) -> None:
        self._instances.envs.pop(instance_id, None)


def environment_tools(factory: Any) -> dict[str, EnvironmentTool]:
    """The tools of an environment class: one per public method (schema from its type hints)."""
    instances = _Instances(factory)
    probe = factory()  # to read the bound methods' signatures; never reset or used
    names = [
        n
        for n, member in inspect.getmembers(probe, callable)
        if not n.startswith("_") and n not in _RESERVED and inspect.ismethod(member)
    ]
    return {
        n: EnvironmentTool(instances, n, method_schema(getattr(probe, n)), owns_reward=i == 0)
        for i, n in enumerate(names)
    }
