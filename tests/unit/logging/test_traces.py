"""Trace files: one parquet per step, crash-safe, dropped after the resumed step, size-bounded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from rlkit.data.batch import Batch
from rlkit.logging.traces import TraceWriter, read_traces, trace_files
from rlkit.models.tokenizer import load_tokenizer
from rlkit.trainer.traces import sample_rows, trace_columns


def _batch(tok) -> Batch:
    prompt = tok("1+2=", add_special_tokens=False)["input_ids"]
    reply = tok("3", add_special_tokens=False)["input_ids"]
    rows, width, plen = 4, 6, len(prompt)
    responses = torch.zeros(rows, width, dtype=torch.long)
    mask = torch.zeros(rows, width)
    for i in range(rows):
        n = (1, 2, 3, width)[i]  # row 3 fills the width: cut by length
        ids = (reply * width)[:n]
        responses[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    scores = torch.zeros(rows, width)
    scores[:, 0] = torch.tensor([1.0, 0.0, 0.5, 0.0])
    old = torch.full((rows, width), -1.0)
    rollout = old.clone()
    rollout[2, 0] = -1.25
    return Batch(
        tensors={
            "prompts": torch.tensor([prompt] * rows),
            "prompt_attention_mask": torch.ones(rows, plen, dtype=torch.long),
            "responses": responses,
            "response_mask": mask,
            "token_level_scores": scores,
            "advantages": torch.tensor([[1.0], [-1.0], [0.5], [-0.5]]).expand(rows, width).clone(),
            "old_log_probs": old,
            "rollout_log_probs": rollout,
            "finished": torch.tensor([True, True, True, False]),
        },
        non_tensors={
            "uid": np.array(["a", "a", "b", "b"], dtype=object),
            "data_source": np.array(["arith"] * rows, dtype=object),
            "ground_truth": np.array(["3"] * rows, dtype=object),
        },
    )


def test_columns_of_a_batch_round_trip_through_parquet(tmp_path: Path) -> None:
    tok = load_tokenizer("builtin:tiny")
    batch = _batch(tok)
    writer = TraceWriter(tmp_path, every=1, max_mb=10, start_step=0)
    writer.write(3, trace_columns(batch, tok, [0, 2, 3]))
    rows = read_traces(tmp_path)
    assert [r["row"] for r in rows] == [0, 2, 3] and {r["step"] for r in rows} == {3}
    assert rows[0]["prompt"] == "1+2=" and rows[0]["response"].startswith("3")
    assert rows[0]["response_ids"] == batch["responses"][0][:1].tolist()
    assert [r["reward"] for r in rows] == [1.0, 0.5, 0.0]
    assert [r["advantage"] for r in rows] == [1.0, 0.5, -0.5]
    assert [r["finish_reason"] for r in rows] == ["stop", "stop", "length"]
    assert rows[1]["logprob_gap_max"] == 0.25 and rows[0]["logprob_gap_mean"] == 0.0
    assert rows[1]["response_length"] == 3 and rows[2]["response_length"] == 6
    assert all(r["trajectory"] is None for r in rows)


def test_multi_turn_trajectory_column_is_json(tmp_path: Path) -> None:
    tok = load_tokenizer("builtin:tiny")
    batch = _batch(tok)
    messages = [
        {"role": "assistant", "content": "<tool_call>...</tool_call>"},
        {"role": "tool", "content": "3"},
    ]
    agent = {
        "messages": messages,
        "tool_calls": [{"name": "calculator"}],
        "num_turns": 2,
        "finish_reason": "stop",
    }
    # as trainer/rollout_batch.py lays out a multi-turn row's extra_info
    infos = [{"index": 0, "agent": agent}, {"index": 1, "agent": agent}, {"index": 2}, {"index": 3}]
    batch.set("extra_info", np.array(infos, dtype=object))
    TraceWriter(tmp_path, every=1, max_mb=10).write(1, trace_columns(batch, tok, [1, 2]))
    rows = read_traces(tmp_path)
    assert json.loads(rows[0]["trajectory"]) == agent and rows[1]["trajectory"] is None


def test_resume_drops_later_steps_and_torn_temp_files(tmp_path: Path) -> None:
    tok = load_tokenizer("builtin:tiny")
    cols = trace_columns(_batch(tok), tok, [0])
    writer = TraceWriter(tmp_path, every=2, max_mb=10)
    assert [writer.wants(s) for s in (1, 2, 3, 4)] == [False, True, False, True]
    for step in (2, 4, 6):
        writer.write(step, cols)
    torn = tmp_path / "traces" / ".step_000008.parquet.tmp-1"
    torn.write_bytes(b"PAR1 torn")
    assert [s for s, _ in trace_files(tmp_path)] == [2, 4, 6]  # the torn file is not a step file
    TraceWriter(tmp_path, every=2, max_mb=10, start_step=4)
    assert [s for s, _ in trace_files(tmp_path)] == [2, 4] and not torn.exists()
    assert [r["step"] for r in read_traces(tmp_path, max_rows=1)] == [4]


def test_size_bound_stops_writing(tmp_path: Path) -> None:
    tok = load_tokenizer("builtin:tiny")
    cols = trace_columns(_batch(tok), tok, [0, 1])
    writer = TraceWriter(tmp_path, every=1, max_mb=1e-6)
    assert writer.write(1, cols) is not None  # the folder was empty: below the bound
    assert writer.write(2, cols) is None and not writer.wants(3)
    assert [s for s, _ in trace_files(tmp_path)] == [1]


def test_sample_rows_is_seeded_and_bounded() -> None:
    assert sample_rows(3, 8, seed=1) == [0, 1, 2]
    picked = sample_rows(100, 5, seed=7)
    assert picked == sample_rows(100, 5, seed=7) and len(set(picked)) == 5 and picked == sorted(picked)
