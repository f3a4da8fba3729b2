"""Tool-call parsers: a model turn's text -> its content and the calls it makes, by format name.

A parser never raises on model output: a call it cannot read becomes a :class:`ParsedCall` with an
``error``, which the loop sends back to the model as the tool message (and counts in the metrics).
New formats are a class with ``parse(text) -> ParsedTurn`` and an entry in :data:`PARSERS`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlkit.errors import UserError


@dataclass
class ParsedCall:
    """One tool call as the model wrote it.

    Attributes:
        name: The function name ('' when the call did not parse far enough to have one).
        arguments: The JSON arguments (an object).
        error: Why the call cannot run (bad JSON, no name, arguments not an object); None if it can.
        raw: The call's text as generated.
    """

    name: str
    arguments: dict[str, Any]
    error: str | None = None
    raw: str = ""


@dataclass
class ParsedTurn:
    """A model turn split into its text content and its tool calls."""

    content: str
    calls: list[ParsedCall] = field(default_factory=list)


class ToolCallParser(Protocol):
    def parse(self, text: str) -> ParsedTurn:
        """Split ``text`` (the turn without its end-of-turn token) into content and calls."""
        ...


class HermesParser:
    """Qwen2.5 / Hermes: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks."""

    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    _BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def parse(self, text: str) -> ParsedTurn:
        calls = [_read_call(m.group(1)) for m in self._BLOCK.finditer(text)]
        rest = self._BLOCK.sub("", text)
        if self.OPEN in rest:  # an opened call never closed
            head, _, tail = rest.partition(self.OPEN)
            calls.append(ParsedCall("", {}, error=f"a {self.OPEN} without {self.CLOSE}", raw=tail))
            rest = head
        return ParsedTurn(content=rest.strip(), calls=calls)


def _read_call(body: str) -> ParsedCall:
    """One call's JSON body -> a call, or a call carrying the one-line reason it cannot run."""
    raw = body.strip()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return ParsedCall("", {}, error=f"the tool call is not valid JSON ({exc.msg})", raw=raw)
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return ParsedCall("", {}, error='the tool call needs a "name" string', raw=raw)
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):  # some models send the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    if not isinstance(arguments, dict):
        return ParsedCall(value["name"], {}, error='"arguments" must be a JSON object', raw=raw)
    return ParsedCall(value["name"], arguments, raw=raw)


PARSERS: dict[str, type] = {"hermes": HermesParser}


def get_parser(name: str) -> ToolCallParser:
    """The parser registered as ``name``.

    Raises:
        UserError: no parser has that name.
    """
    cls = PARSERS.get(name)
    if cls is None:
        raise UserError(
            f"rollout.multi_turn.parser={name!r} is not a tool-call parser",
            hint=f"use one of {', '.join(PARSERS)}",
        )
    parser: ToolCallParser = cls()
    return parser
