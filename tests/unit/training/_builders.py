"""Tiny models and RL batches for the training-engine tests (no network)."""

from __future__ import annotations

from dataclasses import replace

import torch

from rlkit.data.batch import Batch
from rlkit.models import DecoderConfig
from rlkit.models.shapes import TINY

VOCAB = 300


def tiny_decoder_config(tied: bool = True) -> DecoderConfig:
    return replace(TINY, vocab_size=VOCAB, tie_word_embeddings=tied)


def rl_batch(
    prompt_lens: list[int], resp_lens: list[int], p: int, r: int, *, seed: int = 0, pad_id: int = 0
) -> Batch:
    """verl's layout: left-padded prompts, right-padded responses, advantages of alternating sign."""
    gen = torch.Generator().manual_seed(seed)
    b = len(prompt_lens)
    prompts = torch.full((b, p), pad_id, dtype=torch.long)
    responses = torch.full((b, r), pad_id, dtype=torch.long)
    for i, (pl, rl) in enumerate(zip(prompt_lens, resp_lens, strict=True)):
        prompts[i, p - pl :] = torch.randint(3, VOCAB, (pl,), generator=gen)
        responses[i, :rl] = torch.randint(3, VOCAB, (rl,), generator=gen)
    prompt_mask = prompts != pad_id
    response_mask = responses != pad_id
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    advantages = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(b)])[:, None] * response_mask
    return Batch(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "response_mask": response_mask.float(),
            "advantages": advantages.float(),
        },
        meta={"temperature": 1.0},
    )
