"""SFT batches for the SFT and LoRA tests: random conversations and the padded cross-entropy reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._builders import VOCAB

LENGTHS = [9, 4, 12, 7, 2, 10, 6, 11]


def conversations(lengths: list[int], *, seed: int = 0, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded random conversations whose loss mask covers a suffix (the "reply") of each."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    loss = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, VOCAB, (n,), generator=gen)
        attention[i, :n] = 1
        loss[i, max(1, n // 2) : n] = 1
    if len(lengths) > 2:
        loss[2, 8:10] = 0  # a hole inside a reply: masks need not be contiguous
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}


def reference_nll(model: torch.nn.Module, c: dict[str, torch.Tensor]) -> torch.Tensor:
    """Padded forward + masked cross-entropy: token t is predicted from the logits at t - 1."""
    with torch.no_grad():
        logits = model(c["input_ids"], c["attention_mask"]).float()
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), c["input_ids"][:, 1:], reduction="none")
    mask = (c["loss_mask"] * c["attention_mask"])[:, 1:].float()
    return (ce * mask).sum() / mask.sum()
