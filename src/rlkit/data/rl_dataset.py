"""RL prompts: parquet rows in verl's schema -> tokenized prompts, and their collation.

Shape legend: B = prompts in a batch, P = longest prompt of the batch (in tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rlkit.data.chat import Messages, as_messages, prompt_token_ids, use_chat_template
from rlkit.data.rl_parquet import read_parquet_rows
from rlkit.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

_TOKENIZE_CHUNK = 1024
_PROGRESS_MIN_ROWS = 20_000


@dataclass(frozen=True)
class PromptItem:
    """One RL prompt: its token ids and what the reward function needs to score its responses."""

    prompt_ids: list[int]
    data_source: str
    ground_truth: Any
    extra_info: dict[str, Any]
    raw_prompt: Messages
    """The chat messages of the prompt, as stored."""
    index: int
    """Position of the row among all rows read (before filtering)."""
    columns: dict[str, Any] = field(default_factory=dict)
    """The row's values of the dataset's ``columns`` (None where the row has none)."""


class RLDataset(torch.utils.data.Dataset[PromptItem]):
    """Prompts of one or more verl-schema parquet files, tokenized once and filtered by length.

    Prompts longer than ``max_prompt_length`` tokens are dropped; how many is kept in
    ``num_filtered`` (out of ``num_rows``) and logged, never silently.

    Args:
        files: Parquet files (verl's schema: ``prompt``, ``data_source``, ``reward_model``, ...).
        tokenizer: The policy's tokenizer.
        max_prompt_length: Longest prompt kept, in tokens (after the chat template).
        prompt_key: Column of the prompt (a list of chat messages, or a string).
        reward_fn_key: Column whose value selects the scorer (``data_source`` in verl).
        chat_template: Render prompts with the tokenizer's chat template (with the generation prompt);
            None uses it when the tokenizer has one, else the raw text.
        columns: More top-level columns carried with each prompt into the batch, e.g. the one naming
            a row's distillation teacher (a row without the column gets None).

    Raises:
        UserError: A missing file or column (the file and the columns present are named), no
            chat template, or no prompt short enough.
    """

    def __init__(
        self,
        files: list[str],
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_prompt_length: int,
        prompt_key: str = "prompt",
        reward_fn_key: str = "data_source",
        chat_template: bool | None = None,
        columns: tuple[str, ...] = (),
    ) -> None:
        if isinstance(files, str):
            files = [files]
        if not files:
            raise UserError(
                "no data files given", hint="set data.train_files, or prepare some with `rlkit data`"
            )
        self._configure(tokenizer, max_prompt_length, prompt_key, reward_fn_key, chat_template, columns)
        required = (prompt_key, reward_fn_key, "reward_model")
        rows = [row for file in files for row in read_parquet_rows(file, required)]
        self._build(rows, ", ".join(map(str, files)))

    @classmethod
    def from_rows(
        cls,
        rows: list[dict[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_prompt_length: int,
        prompt_key: str = "prompt",
        reward_fn_key: str = "data_source",
        chat_template: bool | None = None,
        columns: tuple[str, ...] = (),
    ) -> RLDataset:
        """A dataset over in-memory schema rows (e.g. ``rlkit.data_prep.arith.generate(...)``)."""
        self = cls.__new__(cls)
        self._configure(tokenizer, max_prompt_length, prompt_key, reward_fn_key, chat_template, columns)
        for i, row in enumerate(rows):
            missing = [k for k in (prompt_key, reward_fn_key, "reward_model") if k not in row]
            if missing:
                raise UserError(
                    f"row {i}: no column {', '.join(missing)} (columns present: {', '.join(row)})"
                )
        self._build(rows, "in-memory rows")
        return self

    def _configure(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_prompt_length: int,
        prompt_key: str,
        reward_fn_key: str,
        chat_template: bool | None,
        columns: tuple[str, ...],
    ) -> None:
        if max_prompt_length < 1:
            raise UserError(f"data.max_prompt_length must be at least 1, got {max_prompt_length}")
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        self.columns = tuple(columns)
        self.prompt_key = prompt_key
        self.reward_fn_key = reward_fn_key
        self.chat_template = use_chat_template(tokenizer, chat_template)

    def _build(self, rows: list[dict[str, Any]], origin: str) -> None:
        if not rows:
            raise UserError(f"{origin}: no rows", hint="check the data files")
        conversations = [as_messages(row[self.prompt_key], f"{origin} row {i}") for i, row in enumerate(rows)]
        ids = self._tokenize(conversations)
        self.items: list[PromptItem] = []
        longest = 0
        for i, (row, conv, prompt_ids) in enumerate(zip(rows, conversations, ids, strict=True)):
            longest = max(longest, len(prompt_ids))
            if len(prompt_ids) > self.max_prompt_length:
                continue
            reward = row["reward_model"]
            if not isinstance(reward, dict) or "ground_truth" not in reward:
                raise UserError(f"{origin} row {i}: reward_model has no ground_truth: {reward!r}")
            item = PromptItem(
                prompt_ids,
                str(row[self.reward_fn_key]),
                reward["ground_truth"],
                row.get("extra_info") or {},
                conv,
                i,
                {name: row.get(name) for name in self.columns},
            )
            self.items.append(item)
        self.num_rows = len(rows)
        self.num_filtered = self.num_rows - len(self.items)
        message = (
            f"{origin}: filtered {self.num_filtered} of {self.num_rows} prompts longer than "
            f"data.max_prompt_length={self.max_prompt_length} tokens (longest: {longest})"
        )
        logger.log(logging.WARNING if self.num_filtered else logging.INFO, message)
        if not self.items:
            raise UserError(message + "; none left", hint="raise data.max_prompt_length")

    def _tokenize(self, conversations: list[Messages]) -> list[list[int]]:
        chunks: Iterable[int] = range(0, len(conversations), _TOKENIZE_CHUNK)
        if len(conversations) >= _PROGRESS_MIN_ROWS:
            from rich.progress import track

            chunks = track(chunks, description="tokenizing prompts", transient=True)
        out: list[list[int]] = []
        for start in chunks:
            batch = conversations[start : start + _TOKENIZE_CHUNK]
            out.extend(prompt_token_ids(self.tokenizer, batch, chat_template=self.chat_template))
        return out

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> PromptItem:
        return self.items[index]


def _object_array(values: list[Any]) -> np.ndarray:
    # np.array(list_of_lists, dtype=object) would build a 2-D array when the lists have equal length
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def collate_prompts(items: list[PromptItem], pad_id: int) -> dict[str, torch.Tensor | np.ndarray]:
    """Left-pad a list of prompts into tensors, with their per-prompt data as object arrays.

    Args:
        items: Prompts, e.g. ``[dataset[i] for i in sampler.next_batch()]``.
        pad_id: Token id used for padding.

    Returns:
        ``prompts`` (long) and ``prompt_attention_mask`` (long, 1 on real tokens), left-padded so
        every prompt ends at the last column; non-tensor object arrays ``raw_prompt_ids`` (the
        unpadded id lists), ``data_source``, ``ground_truth``, ``extra_info``, ``raw_prompt``,
        ``index`` and the dataset's extra ``columns``. Ready for ``Batch(tensors=..., non_tensors=...)``.

    Shape:
        prompts, prompt_attention_mask: ``(B, P)``; every object array: ``(B,)``.
    """
    if not items:
        raise ValueError("collate_prompts needs at least one item")
    width = max(len(item.prompt_ids) for item in items)
    prompts = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        length = len(item.prompt_ids)
        if length:
            prompts[row, width - length :] = torch.tensor(item.prompt_ids, dtype=torch.long)
            mask[row, width - length :] = 1
    columns: dict[str, torch.Tensor | np.ndarray] = {"prompts": prompts, "prompt_attention_mask": mask}
    for name in ("raw_prompt_ids", "data_source", "ground_truth", "extra_info", "raw_prompt", "index"):
        attr = "prompt_ids" if name == "raw_prompt_ids" else name
        columns[name] = _object_array([getattr(item, attr) for item in items])
    for name in items[0].columns:
        columns[name] = _object_array([item.columns[name] for item in items])
    return columns
