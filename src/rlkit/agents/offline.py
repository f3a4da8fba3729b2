"""``rlkit generate --agent``: run an agent loop over a file of prompts; whole trajectories to jsonl.

Each output line is one prompt: ``{"prompt": ..., "trajectories": [...]}`` with each trajectory's
messages, tool calls, turn count, finish reason, token ids, loss mask and log-probs (see
:meth:`rlkit.agents.trajectory.Trajectory.as_record`), plus ``metrics`` (the batch's agent metrics)
on stderr.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rlkit.agents.rollouts import run_rollouts, trajectory_metrics
from rlkit.agents.setup import AgentRuntime, check_multi_turn, loop_settings
from rlkit.agents.template import prompt_ids
from rlkit.errors import UserError
from rlkit.rollout.base import SamplingParams
from rlkit.rollout.offline import (
    GenerateSummary,
    load_engine,
    load_model_tokenizer,
    read_prompts,
    resolve_device,
    resolve_model,
)


def run_agent_generate(
    model: str,
    prompts_file: Path,
    out: Path,
    *,
    params: SamplingParams,
    multi_turn: dict[str, Any],
    device: str = "auto",
    batch_size: int = 256,
    engine: str = "auto",
    server_url: str | None = None,
) -> tuple[GenerateSummary, dict[str, float]]:
    """Trajectories of ``params.n`` samples per prompt, written to ``out`` atomically.

    Args:
        multi_turn: ``rollout.multi_turn``-style settings (``agent``, ``tools``, ``max_turns``, ...);
            ``params.max_tokens`` is each trajectory's whole response budget.

    Returns:
        The summary and the agent metrics summed over all trajectories (means per trajectory).
    """
    check_multi_turn({**multi_turn, "enable": True})
    prompts = read_prompts(prompts_file)
    rows = _rows(prompts)
    path = resolve_model(model)
    tokenizer = load_model_tokenizer(path)
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError("--agent needs a tokenizer with a chat template", hint="use a chat model")
    for r in rows:
        r["prompt_ids"] = prompt_ids(tokenizer, r["raw_prompt"], None)
    rollout = load_engine(
        path,
        tokenizer,
        resolve_device(device),
        max_num_seqs=min(256, batch_size * params.n),
        engine=engine,
        max_model_len=None,
        options={"url": server_url} if server_url else None,
    )
    runtime = AgentRuntime.build(multi_turn, tokenizer)
    settings = loop_settings(multi_turn, params.max_tokens)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    start, tokens, everything = time.perf_counter(), 0, []
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for lo in range(0, len(rows), batch_size):
                chunk = rows[lo : lo + batch_size]
                groups, _ = run_rollouts(
                    rollout, chunk, params, agent=str(multi_turn.get("agent", "tool")), tokenizer=tokenizer,
                    settings=settings, tools=runtime.tools, interactions=runtime.interactions,
                    executor=runtime.executor,
                )  # fmt: skip
                for r, group in zip(chunk, groups, strict=True):
                    tokens += sum(len(t.response_ids) for t in group)
                    everything.extend(group)
                    record = {"prompt": r["prompt"], "trajectories": [t.as_record() for t in group]}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    finally:
        runtime.close()
        rollout.close()
    summary = GenerateSummary(out, len(rows), len(everything), tokens, time.perf_counter() - start)
    per_row = trajectory_metrics(everything)
    return summary, {name: sum(v) / max(len(v), 1) for name, v in per_row.items()}


def _rows(prompts: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for i, prompt in enumerate(prompts):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        rows.append({"prompt": prompt, "raw_prompt": messages, "extra_info": {}, "index": i})
    return rows
