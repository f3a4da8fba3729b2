"""Helpers shared by the dataset modules: building one row of verl's RL parquet schema.

A schema row (reference/verl.md §5) has exactly these columns::

    data_source: str                       # selects the scorer (the reward_fn_key column)
    prompt: [{"role": str, "content": str}, ...]
    ability: str
    reward_model: {"style": str, "ground_truth": Any}
    extra_info: {"split": str, "index": int, ...}
"""

from __future__ import annotations

from typing import Any

RL_COLUMNS: tuple[str, ...] = ("data_source", "prompt", "ability", "reward_model", "extra_info")


def user_prompt(content: str) -> list[dict[str, str]]:
    """A one-message chat prompt, as verl's preprocessing scripts write it."""
    return [{"role": "user", "content": content}]


def schema_row(
    *,
    data_source: str,
    prompt: list[dict[str, str]],
    ability: str,
    ground_truth: Any,
    split: str,
    index: int,
    style: str = "rule",
    **extra: Any,
) -> dict[str, Any]:
    """One row of the RL schema; ``extra`` goes into ``extra_info`` after ``split`` and ``index``."""
    return {
        "data_source": data_source,
        "prompt": prompt,
        "ability": ability,
        "reward_model": {"style": style, "ground_truth": ground_truth},
        "extra_info": {"split": split, "index": index, **extra},
    }
