"""Arithmetic with a calculator (generated offline): ``123*45=`` -> ``5535``, the tool-use task.

The products of a 3-digit and a 2-digit number are beyond what the byte-level tiny model computes
in its head, and trivial with the ``calculator`` tool. A row is the arith layout (user message: the
expression and ``=``; ground truth: the exact product as a string) plus the tool the row may use,
``extra_info.tool_selection = ["calculator"]``; the tool needs no per-row ``tools_kwargs``.

:func:`tool_trace` and :func:`direct_trace` are the two kinds of SFT conversation the warm start
``builtin:tiny-tools`` is trained on (``scripts/build_tiny_tools.py``): one that calls the
calculator and copies its result, one that answers from the model's head. The tools preamble is
written as the system message, which the built-in chat template renders exactly as it renders
``tools=[calculator]`` (so the SFT text is the text the agent loop's prompts start with).

Problems are drawn without repetition from a ``random.Random(seed)`` stream: the same seed gives
the same rows, and a train/test split never shares a problem.
"""

from __future__ import annotations

import json
import random
from typing import Any

from rlkit.data_prep._common import schema_row, user_prompt
from rlkit.errors import UserError

DATA_SOURCE = "arith_tools"
TOOLS = ["calculator"]
#: The calculator's schema as the agent loop shows it (the built-in ``calculator`` tool's own).
CALCULATOR_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "evaluate arithmetic",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. 123*45"}},
            "required": ["expression"],
        },
    },
}
#: What the built-in chat template writes for ``tools=[CALCULATOR_SCHEMA]`` (its system turn).
TOOLS_PREAMBLE = "tools:\ncalculator(expression): evaluate arithmetic"
_DISTINCT = 900 * 90


def problems(n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` distinct ``(expression, product)`` pairs of a 3-digit and a 2-digit number.

    Example:
        >>> problems(2, seed=0)
        [('964*59', 56876), ('876*63', 55188)]

    Raises:
        UserError: more problems than the 81,000 distinct ones.
    """
    if n > _DISTINCT:
        raise UserError(
            f"arith_tools: only {_DISTINCT} distinct problems exist, asked for {n}",
            hint="ask for fewer (--size)",
        )
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[str, int]] = []
    while len(out) < n:
        a, b = rng.randint(100, 999), rng.randint(10, 99)
        text = f"{a}*{b}"
        if text not in seen:
            seen.add(text)
            out.append((text, a * b))
    return out


def _rows(pairs: list[tuple[str, int]], split: str) -> list[dict[str, Any]]:
    return [
        schema_row(
            data_source=DATA_SOURCE,
            prompt=user_prompt(f"{text}="),
            ability="arith",
            ground_truth=str(answer),
            split=split,
            index=index,
            tool_selection=list(TOOLS),
        )
        for index, (text, answer) in enumerate(pairs)
    ]


def generate(n: int, seed: int, *, split: str = "train") -> list[dict[str, Any]]:
    """``n`` schema rows of distinct products (what ``rlkit data arith_tools`` writes)."""
    return _rows(problems(n, seed), split)


def generate_splits(num_train: int, num_test: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Disjoint ``train`` and ``test`` rows drawn from one seeded stream (no problem in both)."""
    pairs = problems(num_train + num_test, seed)
    return {"train": _rows(pairs[:num_train], "train"), "test": _rows(pairs[num_train:], "test")}


def tool_call_text(expression: str) -> str:
    """The Hermes tool call the chat template writes for ``calculator(expression)``."""
    arguments = json.dumps({"expression": expression})
    return f'<tool_call>{{"name": "calculator", "arguments": {arguments}}}</tool_call>'


def tool_trace(row: dict[str, Any]) -> list[dict[str, Any]]:
    """An SFT conversation that calls the calculator on the row's expression and copies the result."""
    expression = row["prompt"][-1]["content"].rstrip("=")
    answer = str(row["reward_model"]["ground_truth"])
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expression}}}
    return [
        {"role": "system", "content": TOOLS_PREAMBLE},
        *row["prompt"],
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": answer},
        {"role": "assistant", "content": answer},
    ]


def direct_trace(row: dict[str, Any], answer: str | None = None) -> list[dict[str, Any]]:
    """An SFT conversation that answers without the tool (``answer``: default the true product)."""
    text = str(row["reward_model"]["ground_truth"]) if answer is None else answer
    return [
        {"role": "system", "content": TOOLS_PREAMBLE},
        *row["prompt"],
        {"role": "assistant", "content": text},
    ]


def sft_conversations(rows: list[dict[str, Any]], tool_fraction: float, seed: int) -> list[dict[str, Any]]:
    """SFT rows (``{"messages": ...}``): a seeded ``tool_fraction`` of tool traces, the rest direct answers."""
    rng = random.Random(seed)
    return [
        {"messages": tool_trace(row) if rng.random() < tool_fraction else direct_trace(row)} for row in rows
    ]
