"""SFT conversations -> token ids plus a loss mask that covers the assistant's tokens only.

The mask comes from the chat template itself: for each assistant turn ``i`` the conversation is
rendered up to turn ``i`` with the generation prompt (where the reply starts) and up to and
including turn ``i`` (where it ends); the characters in between, minus the template's trailing
whitespace, are the reply and its end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ...). The whole
conversation is tokenized once and a token is masked in when it starts inside such a span
(character offsets), so the ids are exactly those ``apply_chat_template(tokenize=True)`` gives.

Shape legend: L = tokens of one example, B = examples in a batch, T = longest example of a batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlkit.data.chat import Messages, as_messages, prompt_token_ids, render, use_chat_template
from rlkit.data.rl_parquet import read_parquet_rows
from rlkit.data.sources import read_file
from rlkit.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TRUNCATION_MODES = ("right", "left", "error")


@dataclass(frozen=True)
class SFTItem:
    """One tokenized conversation.

    Shape:
        input_ids, loss_mask: ``(L,)`` long; ``loss_mask`` is 1 on assistant tokens.
    """

    input_ids: torch.Tensor
    loss_mask: torch.Tensor


def assistant_token_mask(
    tokenizer: PreTrainedTokenizerBase, messages: Messages
) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and a 0/1 mask of its assistant tokens.

    Raises:
        UserError: No assistant turn, a conversation that opens with one, or a chat template that
            renders a turn differently once later turns follow (no stable prefix to align on).
    """
    full = render(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        if i == 0:
            raise UserError(
                "the conversation opens with an assistant turn; SFT needs a prompt before each reply"
            )
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise UserError(
                f"the chat template renders turn {i} differently once later turns follow, so the "
                "assistant tokens cannot be located by prefixes",
                hint="use single-turn rows (prompt/response columns) with this tokenizer",
            )
        spans.append((len(before), len(upto.rstrip())))
    if not spans:
        raise UserError("the conversation has no assistant message to train on")
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    mask = [int(any(lo <= start < hi for lo, hi in spans)) for start, _ in encoded["offset_mapping"]]
    return ids, mask


def plain_token_mask(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> tuple[list[int], list[int]]:
    """Token ids and loss mask of a single-turn conversation written as plain text (no chat template).

    The prompt is what RL generation sees with ``data.chat_template=false`` (the messages' contents
    joined by newlines, with the tokenizer's special tokens such as BOS); the reply follows directly
    and ends with the eos token, and only the reply and its eos are trained on.

    Raises:
        UserError: Not exactly one assistant message, at the end; or a tokenizer without eos.
    """
    roles = [m.get("role") for m in messages]
    if len(messages) < 2 or roles[-1] != "assistant" or "assistant" in roles[:-1]:
        raise UserError(
            "without a chat template a conversation must be a prompt followed by one assistant reply",
            hint="use a tokenizer with a chat template (data.chat_template) for multi-turn conversations",
        )
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos token to end a plain-text reply with")
    (prompt,) = prompt_token_ids(tokenizer, [messages[:-1]], chat_template=False)
    reply = list(tokenizer(str(messages[-1].get("content", "")), add_special_tokens=False)["input_ids"])
    reply.append(int(tokenizer.eos_token_id))
    return prompt + reply, [0] * len(prompt) + [1] * len(reply)


def _read_rows(file: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
    path = Path(file).expanduser()
    if path.suffix == ".parquet":
        return read_parquet_rows(path, required)
    if not path.is_file():
        raise UserError(f"no such data file: {path}")
    rows = [row for split in read_file(path).values() for row in split.rows]
    present: dict[str, None] = {}
    for row in rows:
        present.update(dict.fromkeys(row))
    missing = [name for name in required if name not in present]
    if missing:
        raise UserError(
            f"{path}: no column {', '.join(repr(m) for m in missing)} (columns present: {', '.join(present)})"
        )
    return rows


class SFTDataset(torch.utils.data.Dataset[SFTItem]):
    """Supervised conversations from parquet / jsonl files, tokenized with an assistant-only loss mask.

    Rows hold either a ``messages`` column (multi-turn chat: a list of ``{role, content}``) or,
    when ``prompt_key`` and ``response_key`` are set, a prompt (string or messages) and the
    assistant's response. With ``chat_template`` (None: when the tokenizer has one) conversations
    are rendered by the template; without, single-turn rows are written as plain text
    (:func:`plain_token_mask`). Examples longer than ``max_length`` are truncated (``right``: keep the
    start; ``left``: keep the end) or rejected (``error``); ``num_truncated`` counts them and a log
    line reports it.

    Raises:
        UserError: Missing files or columns, no chat template, a bad row, or a truncation error.
    """

    def __init__(
        self,
        files: list[str],
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int,
        messages_key: str = "messages",
        prompt_key: str | None = None,
        response_key: str | None = None,
        truncation: str = "right",
        chat_template: bool | None = None,
    ) -> None:
        if isinstance(files, str):
            files = [files]
        if truncation not in TRUNCATION_MODES:
            raise UserError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got {truncation!r}")
        if (prompt_key is None) != (response_key is None):
            raise UserError("set both prompt_key and response_key, or neither (to read messages)")
        if max_length < 2:
            raise UserError(f"max_length must be at least 2, got {max_length}")
        self.chat_template = use_chat_template(tokenizer, chat_template)
        required = (prompt_key, response_key) if prompt_key and response_key else (messages_key,)
        self.items: list[SFTItem] = []
        self.num_truncated = 0
        for file in files:
            for i, row in enumerate(_read_rows(file, required)):
                where = f"{file} row {i}"
                if prompt_key and response_key:
                    messages = as_messages(row[prompt_key], where)
                    messages = messages + [{"role": "assistant", "content": str(row[response_key])}]
                else:
                    messages = as_messages(row[messages_key], where)
                self.items.append(self._encode(tokenizer, messages, max_length, truncation, where))
        if not self.items:
            raise UserError(f"no SFT rows in {', '.join(map(str, files))}")
        level = logging.WARNING if self.num_truncated else logging.INFO
        logger.log(
            level,
            f"SFT data: truncated {self.num_truncated} of {len(self.items)} examples to {max_length} tokens",
        )

    def _encode(
        self,
        tokenizer: PreTrainedTokenizerBase,
        messages: Messages,
        max_length: int,
        truncation: str,
        where: str,
    ) -> SFTItem:
        try:
            encode = assistant_token_mask if self.chat_template else plain_token_mask
            ids, mask = encode(tokenizer, messages)
        except UserError as exc:
            raise UserError(f"{where}: {exc.message}", hint=exc.hint) from exc
        if len(ids) > max_length:
            if truncation == "error":
                raise UserError(
                    f"{where}: {len(ids)} tokens > max_length={max_length}", hint="raise max_length"
                )
            self.num_truncated += 1
            keep = slice(0, max_length) if truncation == "right" else slice(len(ids) - max_length, len(ids))
            ids, mask = ids[keep], mask[keep]
        return SFTItem(torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SFTItem:
        return self.items[index]


def collate_sft(items: list[SFTItem], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad SFT examples into a batch.

    Returns:
        ``input_ids`` (padded with ``pad_id``), ``attention_mask`` (1 on real tokens), ``loss_mask``
        (0 on padding) and ``position_ids`` (0.. per example, 0 on padding), all long.

    Shape:
        every output: ``(B, T)``.
    """
    if not items:
        raise ValueError("collate_sft needs at least one item")
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    loss_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        length = len(item.input_ids)
        input_ids[row, :length] = item.input_ids
        attention_mask[row, :length] = 1
        loss_mask[row, :length] = item.loss_mask
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0) * attention_mask
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "loss_mask": loss_mask,
        "position_ids": position_ids,
    }
