"""Tools an agent loop can call: the :class:`~rlkit.agents.tools.base.Tool` interface and built-ins."""

from rlkit.agents.tools.base import Tool, ToolResult

__all__ = ["Tool", "ToolResult"]
