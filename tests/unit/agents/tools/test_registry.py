"""load_tools: built-in names and verl tools YAML files (user classes of both styles); per-row helpers."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from rlkit.agents.tools import Tool
from rlkit.agents.tools.registry import create_kwargs, load_tools, select_tools
from rlkit.errors import UserError

USER_MODULE = '''
from rlkit.agents.tools import StatefulTool, ToolResult

class Echo(StatefulTool):
    name = "echo"
    schema = {"type": "function", "function": {"name": "echo", "description": "Echo.",
              "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}

    def __init__(self, prefix: str = "", schema=None):
        super().__init__(schema=schema)
        self.prefix = prefix

    async def call(self, state, arguments):
        return self.prefix + arguments["text"]


class VerlStyle:
    """A tool written against verl's BaseTool method names (no verl import needed)."""

    def __init__(self, config, tool_schema):
        self.config, self.tool_schema = config, tool_schema
        self.name = tool_schema.function.name
        self.state = {}

    async def create(self, instance_id=None, ground_truth=None, **kwargs):
        self.state[instance_id] = {"truth": ground_truth, "last": None}
        return instance_id, None

    async def execute(self, instance_id, parameters, **kwargs):
        self.state[instance_id]["last"] = parameters["answer"]
        return f"got {parameters['answer']}", -0.05, {"calls": 1}

    async def calc_reward(self, instance_id, **kwargs):
        s = self.state[instance_id]
        return float(s["last"] == s["truth"])

    async def release(self, instance_id, **kwargs):
        del self.state[instance_id]
'''

VERL_YAML = """
tools:
  - class_name: "{module}.Echo"
    config: {{prefix: ">", type: native}}
  - class_name: "{module}.VerlStyle"
    config: {{type: native}}
    tool_schema:
      type: "function"
      function:
        name: "calc_reward"
        description: "Check an answer."
        parameters:
          type: "object"
          properties:
            answer: {{type: "string", description: "The answer"}}
          required: ["answer"]
  - class_name: calculator
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"user_tools_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_builtin_names() -> None:
    tools = load_tools(["calculator"])
    assert list(tools) == ["calculator"] and isinstance(tools["calculator"], Tool)
    assert asyncio.run(tools["calculator"].execute("a", {"expression": "123*45"})).text == "5535"
    assert load_tools("calculator, code_interpreter").keys() == {"calculator", "code_interpreter"}
    assert load_tools(None) == {}


def test_verl_yaml_with_user_classes_of_both_styles(tmp_path: Path, user_module: str) -> None:
    path = tmp_path / "tools.yaml"
    path.write_text(VERL_YAML.format(module=user_module))
    tools = load_tools([str(path)])
    assert list(tools) == ["echo", "calc_reward", "calculator"]
    assert all(isinstance(t, Tool) for t in tools.values())

    async def episode() -> tuple[str, str, float, float]:
        echo, check = tools["echo"], tools["calc_reward"]
        await echo.create("t")
        echoed = (await echo.execute("t", {"text": "hi"})).text
        extra = {"tools_kwargs": {"calc_reward": {"create_kwargs": {"ground_truth": "42"}}}}
        await check.create("t", **create_kwargs(extra, "calc_reward"))
        result = await check.execute("t", {"answer": "42"})
        reward = await check.reward("t")
        await check.release("t")
        return echoed, result.text, result.reward, reward

    assert asyncio.run(episode()) == (">hi", "got 42", -0.05, 1.0)


def test_schema_override_renames_a_builtin(tmp_path: Path) -> None:
    path = tmp_path / "tools.yaml"
    path.write_text(
        textwrap.dedent("""
        tools:
          - class_name: rlkit.agents.tools.calculator.CalculatorTool
            config: {max_length: 10}
            tool_schema:
              type: function
              function:
                name: calc
                description: arithmetic
                parameters: {type: object, properties: {expr: {type: string}}, required: [expr]}
    """)
    )
    tool = load_tools(str(path))["calc"]
    assert asyncio.run(tool.execute("a", {"expr": "2+3"})).text == "5"
    assert "longer than 10" in asyncio.run(tool.execute("a", {"expr": "1+" * 10 + "1"})).error


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("tools: 3", "has no 'tools:' list"),
        ("tools: [{config: {}}]", "has no class_name"),
        ("tools: [{class_name: nosuchmodule.Tool}]", "cannot import 'nosuchmodule'"),
        ("tools: [{class_name: rlkit.agents.tools.calculator.NoSuch}]", "has no class 'NoSuch'"),
        ("tools: [{class_name: calculatr}]", "unknown tool 'calculatr'"),
        ("tools: [{class_name: calculator, config: {bogus: 1}}]", "does not take this config"),
        ("tools: [{class_name: calculator, tool_schema: {type: function}}]", "not an OpenAI function schema"),
        (
            "tools: [{class_name: calculator, tool_schema: {type: function, function: {name: 'a b'}}}]",
            "function.name",
        ),
        ("tools: [{class_name: calculator}, {class_name: calculator}]", "two tools are named 'calculator'"),
        ("tools: [a", "not valid YAML"),
    ],
)
def test_one_line_user_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "tools.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError) as info:
        load_tools([str(path)])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_builtin_name_lists_the_choices() -> None:
    with pytest.raises(UserError, match="unknown tool 'calc'.*built-in tools: calculator"):
        load_tools(["calc"])


def test_row_helpers() -> None:
    tools = load_tools(["calculator", "code_interpreter"])
    assert create_kwargs(None, "calculator") == {}
    assert create_kwargs({"tools_kwargs": {"calculator": {"max": 3}}}, "calculator") == {"max": 3}
    assert create_kwargs({"tools_kwargs": {"calculator": {"create_kwargs": {"a": 1}}}}, "calculator") == {
        "a": 1
    }
    assert select_tools(tools, {}).keys() == tools.keys()
    assert list(select_tools(tools, {"tool_selection": ["calculator"]})) == ["calculator"]
    with pytest.raises(UserError, match="unknown tool.*'search'"):
        select_tools(tools, {"tool_selection": ["search"]})


def test_shipped_gsm8k_code_interpreter_yaml() -> None:
    for spec in ("tools/gsm8k_code_interpreter.yaml", "recipes/tools/gsm8k_code_interpreter.yaml"):
        tool = load_tools([spec])["code_interpreter"]
        assert tool.schema["function"]["parameters"]["required"] == ["code"]
    result = asyncio.run(tool.execute("t", {"code": "print(sum(range(10)))"}))
    assert result.text == "45\n"
