"""The SFT role on one GPU: bf16 loss close to the fp32 reference, LoRA in bf16, offload like no offload.

Run on the GPU machine with ``pytest -m gpu tests/gpu/training``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rlkit.hardware import device as hw

from .conftest import VOCAB

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(hw.device_type() == "cpu", reason="needs a GPU"),
]

LENGTHS = [30, 7, 19, 12, 3, 25, 16, 9]


def _conversations() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    width = max(LENGTHS)
    ids = torch.zeros(len(LENGTHS), width, dtype=torch.long)
    attention, loss = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        ids[i, :n] = torch.randint(3, VOCAB, (n,), generator=gen)
        attention[i, :n] = 1
        loss[i, max(1, n // 2) : n] = 1
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}


def _reference_nll(path: Path, c: dict[str, torch.Tensor]) -> float:
    from rlkit.models import load_causal_lm

    with torch.no_grad():
        logits = load_causal_lm(str(path))(c["input_ids"], c["attention_mask"]).float()
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), c["input_ids"][:, 1:], reduction="none")
    mask = (c["loss_mask"] * c["attention_mask"])[:, 1:].float()
    return float((ce * mask).sum() / mask.sum())


def test_bf16_sft_loss_close_to_fp32_and_it_learns(model_dir: Path) -> None:
    from rlkit.training.sft import SFTRole, sft_batch

    c = _conversations()
    batch = sft_batch(c["input_ids"], c["attention_mask"], c["loss_mask"])
    role = SFTRole(str(model_dir), lr=3e-3, total_steps=10, micro_batch_tokens=40)
    assert role.engine.compute_dtype == torch.bfloat16 and role.engine.device.type == "cuda"
    first = role.train_step(batch)
    assert first["sft/loss"] == pytest.approx(_reference_nll(model_dir, c), rel=0.02)
    for _ in range(5):
        last = role.train_step(batch)
    assert last["sft/loss"] < 0.9 * first["sft/loss"] and last["actor/skipped_steps"] == 0


@pytest.mark.parametrize(
    "extra", [{"lora_rank": 8}, {"param_offload": True}, {"gradient_checkpointing": True}]
)
def test_variants_train_like_the_plain_role(model_dir: Path, extra: dict[str, object]) -> None:
    from rlkit.training.sft import SFTRole, sft_batch

    c = _conversations()
    batch = sft_batch(c["input_ids"], c["attention_mask"], c["loss_mask"])
    role = SFTRole(str(model_dir), lr=1e-2, total_steps=10, micro_batch_tokens=40, **extra)  # type: ignore[arg-type]
    losses = [role.train_step(batch)["sft/loss"] for _ in range(4)]
    assert losses[0] == pytest.approx(_reference_nll(model_dir, c), rel=0.02)
    assert losses[-1] < losses[0]
    names = [n for n, _ in role.named_full_tensors()]
    assert not any("lora" in n or "base_layer" in n for n in names)
