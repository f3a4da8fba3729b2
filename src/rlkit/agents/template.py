"""The chat template's tokens between model turns, and the structural check of a trajectory.

Between two model turns the template renders what follows the model's end-of-turn token (a
separator such as ChatML's newline), the tool or user turn, and the next assistant header. Those
tokens come from rendering the conversation with and without the new messages and taking the
difference, so any template works and the model's own tokens are never re-tokenized.
"""

from __future__ import annotations

from typing import Any

Messages = list[dict[str, Any]]


def render(
    tokenizer: Any, messages: Messages, tools: list[dict[str, Any]] | None, *, generation: bool
) -> str:
    """The template's text of ``messages`` (with the ``tools`` preamble when there are tools)."""
    text: str = tokenizer.apply_chat_template(
        messages, tools=tools or None, add_generation_prompt=generation, tokenize=False
    )
    return text


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of template text (its special tokens as tokens, no BOS added)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def prompt_ids(tokenizer: Any, messages: Messages, tools: list[dict[str, Any]] | None) -> list[int]:
    """The generation prompt of ``messages`` with ``tools`` in the system preamble."""
    return encode(tokenizer, render(tokenizer, messages, tools, generation=True))


def continuation_ids(
    tokenizer: Any,
    before: Messages,
    new: Messages,
    tools: list[dict[str, Any]] | None,
    end_of_turn: str,
) -> tuple[list[int], bool]:
    """Template tokens to append after a model turn that ended with ``end_of_turn``.

    Args:
        before: The conversation up to and including the model's last turn.
        new: The tool / user messages that follow it.
        end_of_turn: The text of the stop token the model's turn ended with (e.g. ``<|im_end|>``).

    Returns:
        The ids of (what the template puts after ``end_of_turn``) + (the new messages) + (the next
        assistant header), and whether the template rendered ``before`` as a prefix of the whole
        (False: the template rewrites earlier turns, and the ids are a best effort).
    """
    base = render(tokenizer, before, tools, generation=False)
    full = render(tokenizer, before + new, tools, generation=True)
    cut = base.rfind(end_of_turn) if end_of_turn else -1
    separator = base[cut + len(end_of_turn) :] if cut >= 0 else ""
    if full.startswith(base):
        return encode(tokenizer, separator + full[len(base) :]), True
    common = _common_prefix(base, full)
    return encode(tokenizer, separator + full[common:]), False


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def check_trajectory(
    tokenizer: Any, token_ids: list[int], raw_messages: Messages, tools: list[dict[str, Any]] | None
) -> bool:
    """Whether a trajectory's ids read back as the template's rendering of its messages.

    ``raw_messages`` are the conversation with each assistant turn's content as the model wrote it
    (tool calls included, as text), so the check concerns the tokens around the model's: a lost or
    doubled separator, a missing header, a tool result in the wrong place. A trajectory cut by the
    token budget matches when it is a prefix of the rendering.

    Returns:
        True when they agree.
    """
    expected = render(tokenizer, raw_messages, tools, generation=False)
    actual = tokenizer.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return bool(expected.startswith(actual)) and bool(actual)
