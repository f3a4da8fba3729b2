"""The tool loop's control flow with a scripted engine: calls, results, masks, budgets, errors."""

from __future__ import annotations

import json

from rlkit.agents.loops import MultiTurnSettings
from rlkit.agents.rollouts import run_rollouts
from rlkit.agents.template import render
from rlkit.rollout.base import SamplingParams

from ._helpers import IM_END, TOK, AddTool, ScriptedEngine, row

CALL = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'


def _run(script: list[str], tools: dict | None = None, n: int = 1, rows: list | None = None, **settings):
    engine = ScriptedEngine(script)
    s = MultiTurnSettings(**{"max_response_length": 400, **settings})
    groups, info = run_rollouts(
        engine,
        rows or [row()],
        SamplingParams(n=n, seed=1, max_tokens=400),
        agent="tool",
        tokenizer=TOK,
        settings=s,
        tools=tools if tools is not None else {"add": AddTool()},
    )
    return groups, engine, info


def test_a_tool_call_then_an_answer_keeps_ids_masks_and_messages() -> None:
    tool = AddTool()
    groups, _, _ = _run([CALL, "The answer is 5."], {"add": tool})
    traj = groups[0][0]
    assert traj.num_turns == 2 and traj.finish_reason == "stop"
    assert [m["role"] for m in traj.messages] == ["user", "assistant", "tool", "assistant"]
    assert traj.messages[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 2, "b": 3}}
    assert traj.messages[2]["content"] == "5"
    assert traj.final_text() == "The answer is 5."
    assert "<tool_response>5</tool_response>" in traj.reward_text() and traj.reward_text().endswith("is 5.")
    # the model's tokens are exactly what the engine gave, with mask 1; template tokens have mask 0
    first = TOK.encode(CALL, add_special_tokens=False) + [IM_END]
    assert traj.response_ids[: len(first)] == first and traj.loss_mask[: len(first)] == [1] * len(first)
    template = TOK.decode([t for t, m in zip(traj.response_ids, traj.loss_mask, strict=True) if m == 0])
    assert (
        template == "\n<|im_start|>user\n<tool_response>5</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    assert traj.logprobs == [-0.5 if m else 0.0 for m in traj.loss_mask]
    # token continuity: prompt + response read back as the template's rendering, tools included
    expected = render(TOK, traj.messages, [tool.schema], generation=False)
    assert TOK.decode(traj.context_ids) + "\n" == expected
    assert not traj.template_mismatch
    assert traj.final_reward == 0.5 and tool.released and len(tool.created) == 1


def test_max_turns_and_the_length_budget_stop_a_trajectory() -> None:
    groups, _, _ = _run([CALL], max_turns=3)
    traj = groups[0][0]
    assert traj.num_turns == 3 and traj.finish_reason == "max_turns" and len(traj.tool_calls) == 2
    groups, _, _ = _run([CALL], max_turns=10, max_response_length=150)
    traj = groups[0][0]
    assert traj.finish_reason == "length" and traj.truncated and len(traj.response_ids) <= 150


def test_malformed_calls_become_error_messages_and_metrics() -> None:
    bad = ['<tool_call>{"name": "add", "arguments": {"a": 2,}}</tool_call>', '<tool_call>{"name"', "5"]
    groups, _, _ = _run(bad)
    traj = groups[0][0]
    assert traj.num_turns == 3
    assert [c.malformed for c in traj.tool_calls] == [True, True]
    assert traj.messages[2]["content"].startswith("Error: the tool call is not valid JSON")
    assert "without </tool_call>" in traj.messages[4]["content"]
    unknown = '<tool_call>{"name": "mul", "arguments": {}}</tool_call>'
    groups, _, _ = _run([unknown, "done"])
    call = groups[0][0].tool_calls[0]
    assert call.error == "no tool named 'mul' (tools: add)" and not call.malformed


def test_parallel_call_limit_long_results_and_rewards() -> None:
    two = CALL + CALL
    groups, _, _ = _run(
        [two, "5"], {"add": AddTool(reward_per_call=0.25)}, max_tool_response_length=1, truncation_side="left"
    )
    traj = groups[0][0]
    assert [c.error for c in traj.tool_calls] == [None, "at most 1 tool call(s) per turn"]
    assert traj.tool_calls[1].result.startswith("E") and "truncated" in traj.tool_calls[1].result
    assert traj.turn_rewards == [(len(TOK.encode(two)), 0.25)]  # on the calling turn's last token


def test_many_trajectories_share_engine_calls_and_tools_run_concurrently() -> None:
    tool = AddTool(delay_s=0.05)
    groups, engine, info = _run([CALL, "5"], {"add": tool}, n=4, rows=[row(), row("what is 1+1?")])
    assert len(groups) == 2 and all(len(g) == 4 for g in groups)
    assert engine.batches == [8, 8]  # every trajectory's turn in one engine call
    assert info["agent/requests_per_call"] == 8
    assert len({iid for iid, _ in tool.created}) == 8  # one instance per trajectory


def test_rows_select_tools_and_pass_their_kwargs() -> None:
    tool = AddTool()
    r = row(tool_selection=["add"], tools_kwargs={"add": {"create_kwargs": {"base": 1}}})
    _run([CALL, "5"], {"add": tool}, rows=[r])
    assert tool.created[0][1] == {"base": 1}
    groups, _, _ = _run([CALL, "5"], {"add": AddTool()}, rows=[row(tool_selection=[])])
    assert "no tool named 'add' (tools: none)" in groups[0][0].tool_calls[0].error


def test_the_hermes_parser_reads_arguments_given_as_a_json_string() -> None:
    from rlkit.agents.parsers import get_parser

    text = "thinking " + json.dumps({"name": "add", "arguments": json.dumps({"a": 1, "b": 2})})
    parsed = get_parser("hermes").parse(f"<tool_call>{text[9:]}</tool_call> ok")
    assert parsed.content == "ok" and parsed.calls[0].arguments == {"a": 1, "b": 2}


def test_the_structural_check_catches_a_lost_separator_at_a_tool_boundary() -> None:
    from rlkit.agents.template import check_trajectory

    groups, _, _ = _run([CALL, "The answer is 5."])
    traj = groups[0][0]
    raw = [traj.messages[0], {"role": "assistant", "content": CALL}, traj.messages[2],
           {"role": "assistant", "content": "The answer is 5."}]  # fmt: skip
    schemas = [AddTool.schema]
    assert check_trajectory(TOK, traj.context_ids, raw, schemas)
    ids = list(traj.context_ids)
    cut = len(traj.prompt_ids) + traj.loss_mask.index(0)  # the newline after the call's <|im_end|>
    assert TOK.decode(ids[cut : cut + 1]) == "\n"
    assert not check_trajectory(TOK, ids[:cut] + ids[cut + 1 :], raw, schemas)
