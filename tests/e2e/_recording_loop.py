"""The ``tool`` agent loop, recording what the engine returned: the multi-turn engine tests' check.

:func:`run_tool_recipe` copies this file into a test's temporary folder and trains ``grpo_tools``
with ``rollout.multi_turn.agent=<copy>:RecordingToolLoop``. Inside the rollout worker every
trajectory is appended to ``trajectories.jsonl`` next to the copy, with each completion the engine
returned for it, so :func:`check_recorded` can hold the trajectories the trainer got against the
engine's own output, whatever the engine. The native and hf tests import this module; the vllm and
server ones (tests/integration/rollout_vllm) load it by path.
"""

from __future__ import annotations

import json
import shutil
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlkit.agents.loops import GenerateFn, LoopContext, ToolLoop
from rlkit.agents.trajectory import Trajectory
from rlkit.logging.traces import read_traces
from rlkit.rollout.base import Completion, SamplingParams

OUT_NAME = "trajectories.jsonl"
# the rollout engine's log-probs of the model's tokens against the trainer's, both fp32 (~1e-6 seen)
GAP_ATOL = 1e-4
# the engine's completions of the trajectory being run (each trajectory is its own asyncio task)
_TURNS: ContextVar[list[dict[str, Any]]] = ContextVar("turns")


class RecordingToolLoop(ToolLoop):
    """The ``tool`` loop; each trajectory is written with the engine's completions it was built from."""

    def __init__(self, ctx: LoopContext) -> None:
        super().__init__(replace(ctx, generate=_recorded(ctx.generate)))

    async def run(self, row: dict[str, Any], sampling: SamplingParams) -> Trajectory:
        turns: list[dict[str, Any]] = []
        _TURNS.set(turns)
        traj = await super().run(row, sampling)
        with (Path(__file__).parent / OUT_NAME).open("a", encoding="utf-8") as f:
            f.write(json.dumps({**traj.as_record(), "engine_turns": turns}, default=str) + "\n")
        return traj


def _recorded(generate: GenerateFn) -> GenerateFn:
    async def call(prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        completions = await generate(prompt_ids, params)
        _TURNS.get().extend(
            {"context": list(prompt_ids), "token_ids": list(c.token_ids), "logprobs": c.logprobs}
            for c in completions
        )
        return completions

    return call


def run_tool_recipe(folder: Path, tiny_run: list[str], *overrides: str) -> dict[str, int]:
    """Two steps of ``grpo_tools`` (4 prompts x 2 samples: the ``tiny_run`` fixture's shape, with the
    recipe's 160-token responses) through the recording loop, checked: the steps' metrics (no
    template mismatch, every call succeeds, rollout and trainer log-probs agree) and
    :func:`check_recorded`'s, whose counts it returns. ``overrides`` pick the engine."""
    from typer.testing import CliRunner

    from rlkit.cli.app import app

    copy, out = folder / "recording_loop.py", folder / "run"
    shutil.copy(__file__, copy)
    args = [*tiny_run, "data.max_response_length=160", f"rollout.multi_turn.agent={copy}:RecordingToolLoop"]
    result = CliRunner().invoke(app, ["train", "grpo_tools", *args, *overrides, f"trainer.out_dir={out}"])
    assert result.exit_code == 0, result.output
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["agent/template_mismatch/count"] == 0.0 and m["agent/tool_success/rate"] == 1.0, m
        assert m["rollout/logprob_gap_abs"] < GAP_ATOL, m
    counts = check_recorded(folder / OUT_NAME)
    print(f"{overrides}: {counts}")
    assert counts["trajectories"] == 16 and counts["calls"] > 0, counts  # the model used the calculator
    assert counts["calls"] == sum(m["agent/tool_calls/total"] for m in steps)
    traced = [json.loads(r["trajectory"]) for r in read_traces(out)]
    # the traces keep whole trajectories: every message, the tool calls, the turn count
    assert traced and all(t["messages"] and t["num_turns"] >= 1 and "tool_calls" in t for t in traced)
    return counts


def check_recorded(path: Path) -> dict[str, int]:
    """Assert that every recorded trajectory is its engine's output, exactly, with the right masks.

    The model's tokens sit in the response exactly as the engine returned them, each turn right after
    the context it was generated from, with loss mask 1 and the engine's log-probs; every other
    response token (tool results, turn separators) has mask 0 and log-prob 0; the chat template's
    check found no mismatch.

    Returns:
        ``{"trajectories", "model_tokens", "calls"}``: calls are the calculator's calls that ran
        without an error.
    """
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records, f"no trajectories in {path}"
    model_tokens = calls = 0
    for rec in records:
        prompt, response, mask = rec["prompt_ids"], rec["response_ids"], rec["loss_mask"]
        sequence, covered = prompt + response, [0] * len(response)
        assert len(mask) == len(rec["logprobs"]) == len(response)
        assert rec["engine_turns"] and not rec["template_mismatch"], rec
        for turn in rec["engine_turns"]:
            start, ids = len(turn["context"]) - len(prompt), turn["token_ids"]
            assert start >= 0 and sequence[: len(turn["context"])] == turn["context"], rec
            assert response[start : start + len(ids)] == ids, rec  # never re-tokenized
            assert turn["logprobs"] is not None and len(turn["logprobs"]) == len(ids), turn
            assert rec["logprobs"][start : start + len(ids)] == turn["logprobs"]
            for i in range(start, start + len(ids)):
                covered[i] = 1
        assert mask == covered, rec  # 1 on the model's tokens, 0 on everything else
        assert all(lp == 0.0 for lp, m in zip(rec["logprobs"], mask, strict=True) if not m)
        model_tokens += sum(mask)
        calls += sum(c["name"] == "calculator" and c["error"] is None for c in rec["tool_calls"])
    return {"trajectories": len(records), "model_tokens": model_tokens, "calls": calls}
