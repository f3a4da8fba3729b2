"""Prompts as chat messages, and their token ids through a tokenizer's chat template.

Parquet returns a message list as structs, where a key one message lacks comes back as None; a
chat template that tests ``message.tool_calls is defined`` would then misfire, so None-valued keys
are dropped. A plain string prompt is one user message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rlkit.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Messages = list[dict[str, Any]]


def as_messages(prompt: Any, where: str) -> Messages:
    """A prompt cell (a string, or a list of ``{role, content}`` dicts) as chat messages.

    Raises:
        UserError: The cell is neither a string nor a non-empty list of messages, or a message has
            no ``content`` (nor ``tool_calls``).
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if (
        isinstance(prompt, Sequence)
        and prompt
        and all(isinstance(m, Mapping) and "role" in m for m in prompt)
    ):
        messages = [{k: v for k, v in m.items() if v is not None} for m in prompt]
        for i, message in enumerate(messages):
            if "content" not in message and "tool_calls" not in message:
                raise UserError(
                    f"{where}: message {i} ({message['role']}) has no 'content'",
                    hint="give every message a content string, e.g. {'role': 'user', 'content': '2+3='}",
                )
        return messages
    raise UserError(
        f"{where}: the prompt must be a string or a list of {{role, content}} messages, got {str(prompt)[:80]!r}"
    )


def use_chat_template(tokenizer: PreTrainedTokenizerBase, setting: bool | None) -> bool:
    """``data.chat_template`` resolved: None (auto) means "when the tokenizer has a template".

    Raises:
        UserError: ``setting`` is True and the tokenizer has no chat template.
    """
    if setting is None:
        return bool(getattr(tokenizer, "chat_template", None))
    if setting:
        require_chat_template(tokenizer)
    return setting


def require_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise a UserError when the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "the tokenizer has no chat template",
            hint="use a chat/instruct model's tokenizer, or set data.chat_template=false to feed raw text",
        )


def _input_ids(encoded: Any) -> list[list[int]]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list
    ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
    return [list(map(int, row)) for row in ids]


def prompt_token_ids(
    tokenizer: PreTrainedTokenizerBase, conversations: list[Messages], *, chat_template: bool
) -> list[list[int]]:
    """Token ids of generation prompts, one list per conversation.

    With ``chat_template`` the conversation is rendered with ``add_generation_prompt=True`` (the
    assistant header that the model continues from); without it the message contents are joined
    with newlines and tokenized as text (with the tokenizer's special tokens such as BOS).
    """
    if not conversations:
        return []
    if chat_template:
        require_chat_template(tokenizer)
        encoded = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True)
        return _input_ids(encoded)
    texts = ["\n".join(str(m.get("content", "")) for m in conv) for conv in conversations]
    return _input_ids(tokenizer(texts, add_special_tokens=True))


def render(tokenizer: PreTrainedTokenizerBase, messages: Messages, *, add_generation_prompt: bool) -> str:
    """The chat template's text for ``messages``."""
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert isinstance(text, str)
    return text
