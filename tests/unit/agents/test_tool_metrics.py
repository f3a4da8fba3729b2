"""A tool's own numbers (``ToolResult.metrics``) reach the step's metrics, summed per tool."""

from __future__ import annotations

import numpy as np
import torch

from rlkit.agents.loops import MultiTurnSettings
from rlkit.agents.rollouts import run_rollouts, tool_metric_sums
from rlkit.agents.tools import ToolResult, function_tool
from rlkit.data.batch import Batch
from rlkit.rollout.base import SamplingParams
from rlkit.trainer.rollout_batch import trajectories_to_batch
from rlkit.trainer.stats import agent_metrics

from ._helpers import TOK, ScriptedEngine, row

CALL = '<tool_call>{"name": "lookup", "arguments": {"query": "abc"}}</tool_call>'


def lookup(query: str) -> ToolResult:
    """Look ``query`` up.

    Args:
        query: What to look for.
    """
    return ToolResult(text=query.upper(), metrics={"hits": 2.0, "bytes": float(len(query))})


def test_tool_metrics_are_recorded_per_call_and_summed_per_tool_in_the_step_metrics() -> None:
    tools = {"lookup": function_tool(lookup)}
    settings = MultiTurnSettings(max_response_length=400)
    groups, _ = run_rollouts(
        ScriptedEngine([CALL, CALL, "done"]), [row(), row("again?")], SamplingParams(n=2, seed=0, max_tokens=400),
        agent="tool", tokenizer=TOK, settings=settings, tools=tools,
    )  # fmt: skip
    calls = [c for g in groups for t in g for c in t.tool_calls]
    assert len(calls) == 8 and all(c.metrics == {"hits": 2.0, "bytes": 3.0} for c in calls)
    assert tool_metric_sums(c.as_dict() for c in calls) == {
        "agent/tool/lookup/hits": 16.0,
        "agent/tool/lookup/bytes": 24.0,
    }
    width = max(len(t.prompt_ids) for g in groups for t in g)
    prompts = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, g in enumerate(groups):
        ids = g[0].prompt_ids
        prompts[i, width - len(ids) :], mask[i, width - len(ids) :] = torch.tensor(ids), 1
    extra = np.array([{}, {}], dtype=object)
    prompt_batch = Batch(
        tensors={"prompts": prompts, "prompt_attention_mask": mask}, non_tensors={"extra_info": extra}
    )
    batch = trajectories_to_batch(prompt_batch, groups, pad_id=0, max_response_length=400, multi_turn=True)
    metrics = agent_metrics(batch)
    assert metrics["agent/tool/lookup/hits"] == 16.0 and metrics["agent/tool/lookup/bytes"] == 24.0
    assert metrics["agent/tool_calls/total"] == 8.0
