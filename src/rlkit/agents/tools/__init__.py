"""Tools an agent loop can call: the :class:`~rlkit.agents.tools.base.Tool` interface and built-ins.

- :func:`function_tool`: a typed Python function with a Google docstring becomes a tool.
- :class:`StatefulTool`: the base class of tools that keep per-trajectory state.
- :mod:`rlkit.agents.tools.registry`: built-in tools by name and verl tools YAML files.
"""

from rlkit.agents.tools.base import Tool, ToolResult
from rlkit.agents.tools.function import FunctionTool, StatefulTool, function_tool

__all__ = ["FunctionTool", "StatefulTool", "Tool", "ToolResult", "function_tool"]
