"""The native decoder equals transformers in fp32: padded (left and right) and packed batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from rlkit.models import CausalLM, DecoderConfig, load_causal_lm, pack_padded

LENGTHS = (11, 6, 1, 8)
VOCAB = 96  # conftest's tiny vocabulary


def _native_from(hf_model: torch.nn.Module) -> CausalLM:
    model = CausalLM(DecoderConfig.from_hf(hf_model.config.to_dict()))
    model.load_state_dict(hf_model.state_dict())
    return model.eval()


def _padded_batch(left: bool, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    width = max(LENGTHS)
    ids = torch.randint(3, VOCAB, (len(LENGTHS), width), generator=gen)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        if left:
            mask[row, width - n :] = 1
        else:
            mask[row, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


def _hf_logits(hf_model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # HF needs explicit positions under left padding
    return hf_model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
@torch.no_grad()
def test_padded_logits_match_transformers(family: str, left: bool, make_hf_model: Callable[..., Any]) -> None:
    hf_model = make_hf_model(family)
    native = _native_from(hf_model)
    ids, mask = _padded_batch(left)
    ours, theirs = native(ids, mask), _hf_logits(hf_model, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=0, atol=1e-5)
    assert ours[~real].abs().max() == 0


@torch.no_grad()
def test_packed_hidden_with_lm_head_matches_transformers(
    family: str, make_hf_model: Callable[..., Any]
) -> None:
    hf_model = make_hf_model(family, tie=family == "qwen2")
    native = _native_from(hf_model)
    ids, mask = _padded_batch(left=False, seed=2)
    ids_T, pos_T, cu_seqlens, _ = pack_padded(ids, mask)
    logits_T = native.lm_head(native.forward_packed(ids_T, pos_T, cu_seqlens))
    for row, n in enumerate(LENGTHS):
        start = int(cu_seqlens[row])
        expected = hf_model(input_ids=ids[row : row + 1, :n]).logits[0]
        torch.testing.assert_close(logits_T[start : start + n], expected, rtol=0, atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    model = load_causal_lm("builtin:tiny", init="random", seed=3).train()
    ids, mask = _padded_batch(left=True, seed=4)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.set_gradient_checkpointing(checkpointing)
        logits = model(ids, mask)
        (logits.float().log_softmax(-1)[..., 5] * mask).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
