"""SFT on a Ray worker group: two FSDP2 workers (gloo, CPU) train exactly like one, LoRA included."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlkit.controller import ResourcePool, WorkerGroup
from rlkit.models import CausalLM, init_weights, load_causal_lm, load_tokenizer, save_hf
from rlkit.models.shapes import TINY
from rlkit.trainer.sft_workers import SFTWorker
from rlkit.training.sft import pad_for_ranks, sft_batch

VOCAB = 300
# 7 rows: two workers get 4 + 4 after padding with one loss-free row; the long rows all land on
# rank 0, so under the 16-token budget the ranks need different numbers of micro-batches.
LENGTHS = [12, 11, 10, 9, 3, 4, 2]


def _conversations() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.long)
    attention, loss = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        ids[i, :n] = torch.randint(3, VOCAB, (n,), generator=gen)
        attention[i, :n] = 1
        loss[i, max(1, n // 2) : n] = 1
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = CausalLM(replace(TINY, vocab_size=VOCAB))
    init_weights(model, seed=0)
    out = tmp_path_factory.mktemp("sft_tiny")
    save_hf(model, out, tokenizer=load_tokenizer("builtin:tiny"))
    return out


def _run(model_dir: Path, world: int, out: Path, **extra: object) -> list[dict[str, float]]:
    c = _conversations()
    batch = pad_for_ranks(sft_batch(c["input_ids"], c["attention_mask"], c["loss_mask"]), world)
    settings = {"model_path": str(model_dir), "lr": 2e-3, "total_steps": 5, "micro_batch_tokens": 16, **extra}
    pool = ResourcePool(1, world, "cpu")
    with WorkerGroup(pool, {"sft": SFTWorker}, {"sft": settings}) as group:
        sft = group.role("sft")
        metrics = [sft.train_step(batch) for _ in range(2)]
        metrics.append(sft.eval_loss(batch))
        sft.export_hf(str(out / "hf"), str(model_dir))
        if extra.get("lora_rank"):
            sft.export_adapter(str(out / "adapter"), str(model_dir))
    return metrics


@pytest.mark.parametrize(
    "extra", [{}, pytest.param({"lora_rank": 4}, marks=pytest.mark.slow)], ids=["full", "lora"]
)
def test_two_workers_train_like_one(
    model_dir: Path, tmp_path: Path, ray_session: None, extra: dict[str, object]
) -> None:
    one = _run(model_dir, 1, tmp_path / "one", **extra)
    two = _run(model_dir, 2, tmp_path / "two", **extra)
    for a, b in zip(one, two, strict=True):
        for key, value in a.items():
            # the padding row adds one (loss-free) token to the token count of the two-worker run
            expected = value + 1 if key.endswith("/tokens") else value
            assert b[key] == pytest.approx(expected, rel=1e-5, abs=1e-6), key
    assert one[-1]["val/loss"] < one[0]["sft/loss"]
    w_one = load_causal_lm(str(tmp_path / "one" / "hf")).state_dict()
    w_two = load_causal_lm(str(tmp_path / "two" / "hf")).state_dict()
    for name, tensor in w_one.items():
        torch.testing.assert_close(w_two[name], tensor, atol=2e-5, rtol=1e-5)
    if extra:
        assert (tmp_path / "two" / "adapter" / "adapter_config.json").is_file()
