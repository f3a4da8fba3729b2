"""Run a tool class written for verl (``BaseTool``'s method names) behind rlkit's :class:`Tool`.

verl's life cycle is the same as rlkit's, with other return types: ``create`` returns
``(instance_id, response)``, ``execute`` returns ``(response, step_reward, metrics)`` where the
response is a ``ToolResponse`` (``.text``) or, in older verl, a string, and the trajectory reward
is ``calc_reward``. The class is built as verl builds it, ``cls(config=..., tool_schema=...)``;
the schema is verl's pydantic ``OpenAIFunctionToolSchema`` when verl is installed, else a mapping
that also answers attribute access (``schema.function.name``) and ``model_dump()``.
"""

from __future__ import annotations

import inspect
from typing import Any

from rlkit.agents.tools.base import ToolResult
from rlkit.agents.tools.function import describe_exception
from rlkit.errors import UserError


class AttrDict(dict):  # type: ignore[type-arg]
    """A dict whose keys read as attributes, recursively (stands in for verl's pydantic schema)."""

    def __getattr__(self, key: str) -> Any:
        try:
            value = self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc
        return AttrDict(value) if isinstance(value, dict) else value

    def model_dump(self, **_: Any) -> dict[str, Any]:
        """The plain mapping (pydantic's name for it)."""
        return dict(self)


def _verl_schema(schema: dict[str, Any] | None) -> Any:
    if schema is None:
        return None
    try:
        from verl.tools.schemas import OpenAIFunctionToolSchema  # type: ignore[import-not-found]
    except ImportError:
        return AttrDict(schema)
    return OpenAIFunctionToolSchema.model_validate(schema)


def _plain_schema(schema: Any) -> dict[str, Any]:
    if hasattr(schema, "model_dump") and not isinstance(schema, AttrDict):
        return dict(schema.model_dump(exclude_unset=True, exclude_none=True))
    return dict(schema)


class VerlToolAdapter:
    """A verl-style tool instance seen through rlkit's :class:`Tool` interface.

    Args:
        inner: The verl-style tool instance.
        schema: Its OpenAI function-tool schema (plain mapping).
    """

    def __init__(self, inner: Any, schema: dict[str, Any]) -> None:
        self.inner = inner
        self.schema = schema
        self.name = schema["function"]["name"]
        self._ids: dict[str, str] = {}

    @classmethod
    def build(
        cls, tool_cls: type, config: dict[str, Any], schema: dict[str, Any] | None, where: str
    ) -> VerlToolAdapter:
        """Construct ``tool_cls`` as verl does and wrap it.

        Raises:
            UserError: the constructor refuses the config, or the tool ends up without a schema.
        """
        try:
            inner = tool_cls(config=config, tool_schema=_verl_schema(schema))
        except Exception as exc:
            raise UserError(
                f"{where}: {tool_cls.__qualname__}(config=...) failed: {describe_exception(exc)}",
                hint="check the entry's config against the tool class",
            ) from exc
        own = schema if schema is not None else getattr(inner, "tool_schema", None)
        if own is None:
            raise UserError(
                f"{where}: {tool_cls.__qualname__} has no tool_schema", hint="add tool_schema to the entry"
            )
        return cls(inner, _plain_schema(own))

    async def create(self, instance_id: str, **kwargs: Any) -> None:
        """verl's ``create``; tools that read ``create_kwargs=`` (verl's agent loop) get it too."""
        params = inspect.signature(self.inner.create).parameters.values()
        extra = {"create_kwargs": kwargs} if any(p.kind is p.VAR_KEYWORD for p in params) else {}
        created = await self.inner.create(instance_id, **kwargs, **extra)
        self._ids[instance_id] = created[0] if isinstance(created, tuple) and created else instance_id

    async def execute(self, instance_id: str, arguments: dict[str, Any]) -> ToolResult:
        """verl's ``execute``; an exception becomes the result's error (as in verl's loop)."""
        try:
            response, step_reward, metrics = await self.inner.execute(
                self._ids.get(instance_id, instance_id), arguments
            )
        except Exception as exc:
            return ToolResult(text="", error=f"{self.name}: {describe_exception(exc)}")
        text = response if isinstance(response, str) else getattr(response, "text", None) or ""
        numbers = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        return ToolResult(text=text, reward=float(step_reward or 0.0), metrics=numbers or None)

    async def reward(self, instance_id: str) -> float:
        """verl's ``calc_reward``."""
        return float(await self.inner.calc_reward(self._ids.get(instance_id, instance_id)))

    async def release(self, instance_id: str) -> None:
        """verl's ``release`` (once per trajectory)."""
        if instance_id in self._ids:
            await self.inner.release(self._ids.pop(instance_id))
