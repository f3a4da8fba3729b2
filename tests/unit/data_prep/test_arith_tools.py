"""The tool-use task: arith_tools rows, its SFT traces (rendered as the agent loop renders them) and its scorer."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from rlkit.agents.tools.registry import load_tools, select_tools
from rlkit.data_prep import arith_tools, get_dataset
from rlkit.models import load_tokenizer
from rlkit.rewards.scorers import arith_tools as scorer
from rlkit.rewards.scorers import default_compute_score


def test_rows_are_right_distinct_and_carry_the_calculator() -> None:
    splits = arith_tools.generate_splits(200, 50, seed=3)
    assert splits == arith_tools.generate_splits(200, 50, seed=3)
    texts = [r["prompt"][0]["content"] for part in splits.values() for r in part]
    assert len(set(texts)) == 250
    for row in splits["train"]:
        a, b = row["prompt"][0]["content"].rstrip("=").split("*")
        assert 100 <= int(a) <= 999 and 10 <= int(b) <= 99
        assert row["reward_model"]["ground_truth"] == str(int(a) * int(b))
        assert row["data_source"] == "arith_tools" and row["extra_info"]["tool_selection"] == ["calculator"]
    assert get_dataset("arith_tools").generator is arith_tools.generate_splits


def test_the_row_selects_the_builtin_calculator_with_its_schema() -> None:
    row = arith_tools.generate(1, seed=0)[0]
    tools = select_tools(load_tools(["calculator", "python"]), row["extra_info"])
    assert list(tools) == ["calculator"] and tools["calculator"].schema == arith_tools.CALCULATOR_SCHEMA


def test_sft_traces_render_like_the_agent_loop_prompt() -> None:
    tokenizer = load_tokenizer("builtin:tiny")
    row = arith_tools.generate(1, seed=0)[0]
    trace = arith_tools.tool_trace(row)
    with_system = tokenizer.apply_chat_template(trace, tokenize=False)
    with_tools = tokenizer.apply_chat_template(
        trace[1:], tools=[arith_tools.CALCULATOR_SCHEMA], tokenize=False
    )
    assert with_system == with_tools
    expression = row["prompt"][0]["content"].rstrip("=")
    assert arith_tools.tool_call_text(expression) in with_system
    answer = row["reward_model"]["ground_truth"]
    assert with_system.endswith(
        f"<tool_response>{answer}</tool_response><|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
    )
    convs = arith_tools.sft_conversations(arith_tools.generate(400, seed=1), tool_fraction=0.4, seed=2)
    share = sum(any(m.get("tool_calls") for m in c["messages"]) for c in convs) / len(convs)
    assert 0.3 < share < 0.5  # binomial(400, 0.4): sd 0.025


@pytest.mark.parametrize(
    ("response", "score", "called"),
    [
        ("5535", 1.0, False),
        ("5536", 0.0, False),
        (
            '<tool_call>{"name": "calculator", "arguments": {"expression": "123*45"}}</tool_call><|im_end|>\n'
            "<|im_start|>user\n<tool_response>5535</tool_response><|im_end|>\n<|im_start|>assistant\n5535<|im_end|>",
            1.0,
            True,
        ),
        (
            '<tool_call>{"name": "calculator", "arguments": {"expression": "123*45"}}</tool_call>\n'
            "user\n<tool_response>5535</tool_response>\nassistant\n5535",
            1.0,
            True,
        ),  # special tokens skipped
        ('<tool_call>{"name": "calculator", "arguments": {"expression": "123*45"}}</tool_call>', 0.0, True),
        (
            "<tool_call>x</tool_call>\nuser\n<tool_response>5535</tool_response>\nassistant\n<tool_call>y</tool_call>",
            0.0,
            True,
        ),
        (
            "<tool_call>x</tool_call>\nuser\n<tool_response>5535</tool_response>\nassistant\nit is 5530",
            0.0,
            True,
        ),
    ],
)
def test_scorer_reads_the_last_assistant_turn(response: str, score: float, called: bool) -> None:
    result = scorer.compute_score(response, "5535")
    assert result["score"] == score and result["tool_called"] is called
    assert default_compute_score("arith_tools", response, "5535")["score"] == score


def test_doctests() -> None:
    assert doctest.testmod(scorer).failed == 0
    assert doctest.testmod(arith_tools).failed == 0


def test_rlkit_data_writes_the_task(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from rlkit.data.prepare import prepare_dataset

    prepare_dataset("arith_tools", out=tmp_path, limit=64, progress=False)

    table = pq.read_table(tmp_path / "train.parquet").to_pylist()
    assert table[0]["extra_info"]["tool_selection"] == ["calculator"]


def test_the_trainer_generates_it_as_data_synthetic() -> None:
    from rlkit.config.load import load_config
    from rlkit.trainer.data import build_train_data

    cfg = load_config(
        "grpo", overrides=["data.synthetic=arith_tools", "data.synthetic_size=64"], command="train"
    )
    data = build_train_data(cfg, load_tokenizer("builtin:tiny"))
    assert len(data.train) == 64
