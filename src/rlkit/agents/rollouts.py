"""Run an agent loop over a batch of prompts on one engine: every trajectory in flight at once.

:func:`run_rollouts` is what the rollout worker and ``rlkit generate --agent`` call: it builds the
loop over an :class:`~rlkit.rollout.async_batcher.AsyncBatcher` of the engine and runs every
row's group concurrently in one event loop. :func:`trajectory_metrics` sums up what the loops did,
:func:`tool_metric_sums` what the tools reported (``ToolResult.metrics``).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from typing import Any

from rlkit.agents.interactions import Interaction
from rlkit.agents.loops import LoopContext, MultiTurnSettings, loop_class
from rlkit.agents.tools.base import Tool
from rlkit.agents.trajectory import Trajectory
from rlkit.rollout.async_batcher import AsyncBatcher
from rlkit.rollout.base import RolloutEngine, SamplingParams


def run_rollouts(
    engine: RolloutEngine,
    rows: list[dict[str, Any]],
    sampling: SamplingParams,
    *,
    agent: str,
    tokenizer: Any,
    settings: MultiTurnSettings,
    tools: dict[str, Tool] | None = None,
    interactions: dict[str, Interaction] | None = None,
    max_wait_s: float = 0.01,
    executor: Executor | None = None,
) -> tuple[list[list[Trajectory]], dict[str, float]]:
    """``sampling.n`` trajectories of every row (in row order), the batcher's metrics and the loop's
    ``prompt_overhead`` (see :meth:`~rlkit.agents.loops.AgentLoop.prompt_overhead`).

    Args:
        engine: Any rollout engine.
        rows: One dict per prompt: ``prompt_ids``, ``raw_prompt``, ``extra_info``, ``index``.
        sampling: The request's parameters; its seed makes every trajectory reproducible.
        agent: A loop name or class path (``rollout.multi_turn.agent``).
        tokenizer: The policy's tokenizer (its chat template renders tool and user turns).
        settings: The ``rollout.multi_turn`` limits.
        tools: The tool set (see :func:`rlkit.agents.setup.build_tools`).
        interactions: Simulated users by name.
        max_wait_s, executor: See :class:`AsyncBatcher`.
    """
    batcher = AsyncBatcher(engine, max_wait_s=max_wait_s, executor=executor)
    ctx = LoopContext(
        tokenizer=tokenizer,
        generate=batcher.generate,
        tools=dict(tools or {}),
        interactions=dict(interactions or {}),
        settings=settings,
        live=batcher.live,
    )
    loop = loop_class(agent)(ctx)

    async def main() -> list[list[Trajectory]]:
        # a row's seeds follow from its dataset index (not its place in a shard): the same on any
        # number of workers, so a resume on another world size repeats the same samples
        keys = [int(row.get("index", i)) for i, row in enumerate(rows)]
        return list(
            await asyncio.gather(
                *(loop.run_group(r, sampling, key=k) for r, k in zip(rows, keys, strict=True))
            )
        )

    groups = asyncio.run(main())
    calls = max(batcher.calls, 1)
    info = {
        "agent/engine_calls": float(batcher.calls),
        "agent/requests_per_call": batcher.requests / calls,
        "prompt_overhead": float(loop.prompt_overhead()),
    }
    return groups, info


def trajectory_metrics(trajectories: list[Trajectory]) -> dict[str, list[float]]:
    """Per-trajectory numbers, one list per metric (the batch carries them as ``agent_*`` columns)."""
    names = (
        "num_turns", "tool_calls", "tool_errors", "tool_timeouts", "tool_malformed", "tool_latency_s",
        "tokens_prompt", "tokens_model", "tokens_template", "truncated", "template_mismatch",
    )  # fmt: skip
    out: dict[str, list[float]] = {name: [] for name in names}
    for t in trajectories:
        calls = t.tool_calls
        roles = t.tokens_by_role()
        values = (
            t.num_turns,
            len(calls),
            sum(c.error is not None and not c.timed_out for c in calls),
            sum(c.timed_out for c in calls),
            sum(c.malformed for c in calls),
            sum(c.latency_s for c in calls),
            roles["prompt"],
            roles["model"],
            roles["template"],
            t.truncated,
            t.template_mismatch,
        )
        for name, value in zip(names, values, strict=True):
            out[name].append(float(value))
    return out


def tool_metric_sums(calls: Iterable[Mapping[str, Any]], prefix: str = "agent/tool/") -> dict[str, float]:
    """The tools' own numbers (``ToolResult.metrics``) summed over ``calls``, as ``PREFIX<tool>/<key>``.

    Args:
        calls: Tool-call records as dicts (:meth:`~rlkit.agents.trajectory.ToolCallRecord.as_dict`).
        prefix: The metric names' prefix.
    """
    sums: dict[str, float] = defaultdict(float)
    for call in calls:
        for key, value in (call.get("metrics") or {}).items():
            sums[f"{prefix}{call.get('name')}/{key}"] += float(value)
    return dict(sums)
