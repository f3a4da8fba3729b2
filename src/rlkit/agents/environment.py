"""TRL-style environments as tools: one instance per trajectory, public methods become tools.

An environment class (TRL's ``environment_factory`` shape) is built once per trajectory with no
arguments; ``reset(**kwargs)`` starts it (``kwargs``: the row's ``extra_info.env_kwargs``); each
public method other than ``reset`` / ``get_reward`` is a tool, made by
:func:`rlkit.agents.tools.function_tool` (schema from its type hints and Google docstring, the
model's arguments checked against it); an optional ``get_reward()`` is the trajectory's reward. A
method's return value is the tool message; bad arguments or an exception it raises become the error
shown to the model.
"""

from __future__ import annotations

import inspect
from typing import Any

from rlkit.agents.tools.base import ToolResult
from rlkit.agents.tools.function import function_tool
from rlkit.errors import UserError

_RESERVED = {"reset", "get_reward"}


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
        # the bound method of this trajectory's instance, checked and called as a function tool
        return await function_tool(getattr(env, self._method), name=self.name).execute(instance_id, arguments)

    async def reward(self, instance_id: str) -> float:
        env = self._instances.envs.get(instance_id)
        get_reward = getattr(env, "get_reward", None)
        if not self._owns_reward or not callable(get_reward):
            return 0.0
        return float(await _maybe_await(get_reward()))

    async def release(self, instance_id: str) -> None:
        self._instances.envs.pop(instance_id, None)


def environment_tools(factory: Any) -> dict[str, EnvironmentTool]:
    """The tools of an environment class: one per public method (schema from its type hints).

    Raises:
        UserError: a method has a parameter that JSON cannot describe, or ``*args`` / ``**kwargs``.
    """
    instances = _Instances(factory)
    probe = factory()  # to read the bound methods' signatures; never reset or used
    names = [
        n
        for n, member in inspect.getmembers(probe, callable)
        if not n.startswith("_") and n not in _RESERVED and inspect.ismethod(member)
    ]
    tools = {}
    for i, n in enumerate(names):
        try:
            schema = function_tool(getattr(probe, n)).schema
        except TypeError as exc:
            raise UserError(
                f"rollout.multi_turn.environment: method {n!r} cannot be a tool ({exc})",
                hint="type its parameters with str, int, float, bool, list, dict, Literal or Optional",
            ) from exc
        tools[n] = EnvironmentTool(instances, n, schema, owns_reward=i == 0)
    return tools
