"""Build what the agent loops need from the ``rollout.multi_turn`` settings (in the rollout worker).

The tool set comes from :mod:`rlkit.agents.tools.registry` (built-in names and verl tools YAML
files) plus a TRL-style environment's methods; interactions from a verl-layout YAML file. Checks
that need only the config run in :func:`check_multi_turn`, before Ray starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rlkit.agents.environment import environment_tools
from rlkit.agents.interactions import Interaction, load_interactions
from rlkit.agents.loading import load_object
from rlkit.agents.loops import MultiTurnSettings, loop_class
from rlkit.agents.parsers import get_parser
from rlkit.agents.tools.base import Tool
from rlkit.agents.tools.registry import load_tools
from rlkit.errors import UserError

#: The ``rollout.multi_turn`` keys that :class:`MultiTurnSettings` takes.
_SETTINGS_KEYS = (
    "max_turns", "max_tool_response_length", "truncation_side", "max_parallel_calls", "parser",
    "tool_timeout_s", "turn_reward",
)  # fmt: skip


@dataclass
class AgentRuntime:
    """What a rollout worker keeps between steps for its agent loop: built once, closed at the end.

    Attributes:
        tokenizer: The policy's tokenizer (its chat template renders tool and user turns).
        tools: The tool set; a tool holding processes or indexes may have ``close()``.
        interactions: Simulated users by name.
        executor: The one thread that makes every engine call of the agent path (an engine's
            device state stays on one thread).
    """

    tokenizer: Any
    tools: dict[str, Tool]
    interactions: dict[str, Interaction]
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlkit-engine")
    )

    @classmethod
    def build(cls, multi_turn: Mapping[str, Any], tokenizer: Any) -> AgentRuntime:
        return cls(tokenizer, build_tools(multi_turn), build_interactions(multi_turn))

    def close(self) -> None:
        for tool in self.tools.values():
            close = getattr(tool, "close", None)
            if callable(close):
                close()
        self.executor.shutdown(wait=False)


def build_tools(multi_turn: Mapping[str, Any]) -> dict[str, Tool]:
    """The tools of ``rollout.multi_turn``: its ``tools`` (names / YAML paths) and ``environment``.

    Raises:
        UserError: a tool cannot be built, or two tools share a name.
    """
    tools: dict[str, Tool] = {}
    names = list(multi_turn.get("tools") or [])
    if names:
        tools.update(load_tools(names))
    env = multi_turn.get("environment")
    if env:
        for name, tool in environment_tools(
            load_object(str(env), key="rollout.multi_turn.environment")
        ).items():
            if name in tools:
                raise UserError(
                    f"the environment's method {name!r} has the name of a tool in rollout.multi_turn.tools",
                    hint="rename the method or drop the tool",
                )
            tools[name] = tool
    return tools


def loop_settings(multi_turn: Mapping[str, Any], max_response_length: int) -> MultiTurnSettings:
    """The loop limits of a ``rollout.multi_turn`` mapping and the response budget."""
    values = {k: multi_turn[k] for k in _SETTINGS_KEYS if k in multi_turn}
    return MultiTurnSettings(**values, max_response_length=max_response_length)


def build_interactions(multi_turn: Mapping[str, Any]) -> dict[str, Interaction]:
    """The interactions of ``rollout.multi_turn.interaction_config_path`` (none without one)."""
    return load_interactions(multi_turn.get("interaction_config_path"))


def check_multi_turn(multi_turn: Mapping[str, Any]) -> None:
    """Refuse, before Ray starts, a loop or parser name that does not exist, or a loop that has
    nothing to run (``tool`` without tools, environment or interactions).

    Raises:
        UserError: one line naming the key and the fix.
    """
    if not multi_turn.get("enable"):
        return
    agent = str(multi_turn.get("agent", "single_turn"))
    loop_class(agent)
    get_parser(str(multi_turn.get("parser", "hermes")))
    has_any = (
        multi_turn.get("tools") or multi_turn.get("environment") or multi_turn.get("interaction_config_path")
    )
    if agent == "tool" and not has_any:
        raise UserError(
            "rollout.multi_turn.agent=tool has no tools, environment or interactions",
            hint="set rollout.multi_turn.tools=[calculator] (or .environment / .interaction_config_path)",
        )
    build_interactions(multi_turn)  # a bad file, class or tool name fails here, not in a worker
    build_tools(multi_turn)
