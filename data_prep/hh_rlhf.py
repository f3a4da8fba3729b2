"""Anthropic HH-RLHF (``Anthropic/hh-rlhf``): preference pairs for SPIN / SPPO-style recipes.

A raw row holds two whole dialogues, ``chosen`` and ``rejected``, written as
``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` turns that share every turn but the last assistant reply.
The schema row's prompt is the dialogue before that last reply (as chat messages), the chosen reply
is the ground truth (``reward_model.style = "model"``: it is a reference, not something a rule
checks), and ``extra_info`` carries both replies as ``chosen`` and ``rejected``.

A pair whose two dialogues differ before the last reply has no common prompt; it is skipped (the
driver counts and reports skipped rows).
"""

from __future__ import annotations

import re
from typing import Any

from rlkit.data_prep._common import schema_row
from rlkit.errors import UserError

DATA_SOURCE = "hh_rlhf"
REQUIRED_COLUMNS = ("chosen", "rejected")
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_dialogue(text: str) -> list[dict[str, str]]:
    """The turns of an HH-RLHF dialogue as chat messages.

    Raises:
        UserError: The text has no ``Human:`` / ``Assistant:`` turns.

    Example:
        >>> parse_dialogue("\\n\\nHuman: Hi\\n\\nAssistant: Hello!")
        [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
    """
    pieces = _TURN.split(text.lstrip("\n"))
    if len(pieces) < 3 or pieces[0].strip():
        raise UserError(f"not an HH-RLHF dialogue ('Human: ... Assistant: ...'): {text[:80]!r}")
    return [
        {"role": _ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(pieces[1::2], pieces[2::2], strict=True)
    ]


def split_last_reply(text: str) -> tuple[list[dict[str, str]], str]:
    """A dialogue's messages before its last assistant turn, and that turn's content.

    Raises:
        UserError: The dialogue does not end with an assistant turn after a user turn.
    """
    messages = parse_dialogue(text)
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise UserError(f"dialogue does not end with an 'Assistant:' reply: {text[-80:]!r}")
    return messages[:-1], messages[-1]["content"]


def map_row(row: dict[str, Any], index: int, split: str) -> dict[str, Any] | None:
    """A raw HH-RLHF row (``chosen``, ``rejected``) as a schema row, or None to skip it."""
    prompt, chosen = split_last_reply(row["chosen"])
    rejected_prompt, rejected = split_last_reply(row["rejected"])
    if rejected_prompt != prompt:
        return None
    return schema_row(
        data_source=DATA_SOURCE,
        prompt=prompt,
        ability="alignment",
        ground_truth=chosen,
        style="model",
        split=split,
        index=index,
        chosen=chosen,
        rejected=rejected,
    )
