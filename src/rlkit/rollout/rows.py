"""Per-request and per-row bookkeeping the ``native`` and ``hf`` engines share.

One set of parameters per prompt, the checks of a ``generate`` call, the stop tokens of a request,
the exponential noise of a batch of rows (seeded rows draw from their own stream) and the text
decoder stop strings need. The engines differ in how they batch and run the model, not in these.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Sequence_
from typing import Any

import torch

from rlkit.errors import UserError
from rlkit.rollout.base import SamplingParams
from rlkit.rollout.scheduler import Sequence


def params_per_prompt(
    prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
) -> list[SamplingParams]:
    """One :class:`SamplingParams` per prompt (one for all, or a list of the prompts' length).

    Raises:
        ValueError: a list of another length.
    """
    if isinstance(params, SamplingParams):
        return [params] * len(prompts)
    if len(params) != len(prompts):
        raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
    return list(params)


def check_prompts(
    prompts: list[list[int]],
    per_prompt: list[SamplingParams],
    *,
    vocab: int,
    has_tokenizer: bool,
    max_model_len: int | None,
) -> None:
    """The checks of a ``generate`` call, before any work.

    Raises:
        ValueError: an empty prompt, token ids outside ``[0, vocab)``, stop strings without a tokenizer.
        UserError: a prompt that does not fit ``max_model_len``.
    """
    for i, (prompt, sp) in enumerate(zip(prompts, per_prompt, strict=True)):
        if not prompt:
            raise ValueError(f"prompt {i} is empty")
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {vocab})")
        if sp.stop and not has_tokenizer:
            raise ValueError("stop strings need an engine built with a tokenizer")
        if max_model_len is not None and len(prompt) >= max_model_len:
            raise UserError(
                f"rollout: prompt {i} has {len(prompt)} tokens, max_model_len is {max_model_len}",
                hint="raise max_model_len or filter long prompts (data.max_prompt_length)",
            )


def stop_ids(sp: SamplingParams, default_stop_ids: list[int]) -> frozenset[int]:
    """A request's stop tokens: explicit ones always; the model's own unless given or ``ignore_eos``."""
    explicit = set(sp.stop_token_ids or [])
    if sp.stop_token_ids is None and not sp.ignore_eos:
        explicit |= set(default_stop_ids)
    return frozenset(explicit)


def row_noise(rows: Sequence_[Sequence | None], vocab: int, device: torch.device) -> torch.Tensor | None:
    """(R, V) exponential noise, one row per entry (None: an idle row); None when every row is greedy.

    A seeded sequence draws its row from its own generator, so its samples do not depend on its batch-mates.
    """
    live = [(row, seq) for row, seq in enumerate(rows) if seq is not None]
    if all(seq.params.greedy for _, seq in live):
        return None
    noise = torch.empty((len(rows), vocab), device=device).exponential_()
    for row, seq in live:
        if seq.generator is not None:
            noise[row].exponential_(generator=seq.generator)
    return noise


def text_decoder(tokenizer: Any | None) -> Callable[[list[int]], str] | None:
    """``ids -> text`` with special tokens kept (what stop strings are matched against), or None."""
    if tokenizer is None:
        return None

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=False))

    return decode
