"""TRL-style environments, a user's own loop class, the config checks and ``rlkit generate --agent``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlkit.agents.environment import environment_tools
from rlkit.agents.loops import MultiTurnSettings, loop_class
from rlkit.agents.rollouts import run_rollouts
from rlkit.agents.setup import check_multi_turn
from rlkit.cli.app import app
from rlkit.errors import UserError
from rlkit.rollout.base import SamplingParams

from ._helpers import TOK, ScriptedEngine, row

ENV = Path(__file__).parents[2] / "e2e" / "_agent_env.py"


class Counter:
    def reset(self, start: int = 0) -> None:
        self.value = start

    def bump(self, by: int, note: str = "") -> int:
        """Add ``by`` to the counter.

        Args:
            by: How much.
        """
        self.value += by
        return self.value

    def get_reward(self) -> float:
        return float(self.value)


def test_an_environment_s_public_methods_become_tools_with_one_instance_per_trajectory() -> None:
    tools = environment_tools(Counter)
    assert list(tools) == ["bump"]
    fn = tools["bump"].schema["function"]
    assert fn["description"] == "Add ``by`` to the counter."
    assert fn["parameters"]["properties"] == {
        "by": {"type": "integer", "description": "How much."},
        "note": {"type": "string", "default": ""},
    }
    assert fn["parameters"]["required"] == ["by"]
    call = '<tool_call>{"name": "bump", "arguments": {"by": 2}}</tool_call>'
    rows = [row(env_kwargs={"start": 10}), row()]
    groups, _ = run_rollouts(
        ScriptedEngine([call, call, "done"]), rows, SamplingParams(n=2, seed=0, max_tokens=300), agent="tool",
        tokenizer=TOK, settings=MultiTurnSettings(max_response_length=300), tools=tools,
    )  # fmt: skip
    assert [t.tool_calls[-1].result for t in groups[0]] == ["14", "14"]  # own state per trajectory
    assert [t.final_reward for t in groups[1]] == [4.0, 4.0]  # get_reward()
    bad = '<tool_call>{"name": "bump", "arguments": {"by": 1, "what": 2}}</tool_call>'
    groups, _ = run_rollouts(
        ScriptedEngine([bad, "done"]), [row()], SamplingParams(seed=0, max_tokens=300), agent="tool",
        tokenizer=TOK, settings=MultiTurnSettings(max_response_length=300), tools=environment_tools(Counter),
    )  # fmt: skip
    assert groups[0][0].tool_calls[0].error.startswith("bump: ")  # checked against the schema
    assert "what" in groups[0][0].tool_calls[0].error


def test_a_user_loop_class_from_a_file(tmp_path: Path) -> None:
    file = tmp_path / "my_loop.py"
    file.write_text(
        "from rlkit.agents.loops import AgentLoop\n"
        "from rlkit.agents.trajectory import Trajectory\n"
        "class Echo(AgentLoop):\n"
        "    async def run(self, row, sampling):\n"
        "        c = (await self.ctx.generate(row['prompt_ids'], sampling))[0]\n"
        "        t = Trajectory(prompt_ids=row['prompt_ids'])\n"
        "        t.add_model_tokens(c.token_ids, c.logprobs)\n"
        "        return t\n"
    )
    assert loop_class(f"{file}:Echo").__name__ == "Echo"
    groups, _ = run_rollouts(
        ScriptedEngine(["hi"]), [row()], SamplingParams(n=3, seed=0), agent=f"{file}:Echo", tokenizer=TOK,
        settings=MultiTurnSettings(),
    )  # fmt: skip
    assert [TOK.decode(t.response_ids) for t in groups[0]] == ["hi<|im_end|>"] * 3
    with pytest.raises(UserError, match="is not an AgentLoop subclass"):
        loop_class("rlkit.agents.trajectory:Trajectory")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"agent": "toool"}, "is not an agent loop"),
        ({"agent": "tool"}, "has no tools, environment or interactions"),
        ({"agent": "single_turn", "parser": "xml"}, "is not a tool-call parser"),
        ({"agent": "tool", "interaction_config_path": "/nope.yaml"}, "no such file"),
        ({"agent": "tool", "environment": "rlkit.nothing:Here"}, "cannot import"),
    ],
)
def test_bad_multi_turn_settings_are_one_line_errors(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        check_multi_turn({"enable": True, **settings})
    check_multi_turn({"enable": False, **settings})  # off: nothing is checked


def test_generate_with_an_agent_writes_whole_trajectories(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "12+34="}\n{"messages": [{"role": "user", "content": "7*8="}]}\n')
    out = tmp_path / "out.jsonl"
    args = ["generate", "builtin:tiny-arith", "--prompts", str(prompts), "--out", str(out), "--agent", "tool"]
    args += ["--environment", f"{ENV}:Counter", "--n", "2", "--seed", "1", "--max-tokens", "48"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows][0] == "12+34=" and all(len(r["trajectories"]) == 2 for r in rows)
    traj = rows[1]["trajectories"][0]
    assert (
        traj["messages"][0] == {"role": "user", "content": "7*8="}
        and traj["messages"][1]["role"] == "assistant"
    )
    assert len(traj["loss_mask"]) == len(traj["response_ids"]) == len(traj["logprobs"])
    assert "bump(by)" in TOK.decode(traj["prompt_ids"])  # the tools preamble
    assert "num_turns" in result.output


class _Opaque:
    pass


class _BadEnv:
    def reset(self) -> None: ...

    def use(self, thing: _Opaque) -> str:
        """Use a thing."""
        return "ok"


def test_an_environment_method_json_cannot_describe_is_one_line_naming_it() -> None:
    with pytest.raises(UserError) as err:
        environment_tools(_BadEnv)
    assert "method 'use' cannot be a tool" in err.value.message
