"""The FSDP2 engine on one GPU: bf16 mixed precision, CPU offload of parameters and optimizer states.

Run on the GPU machine with ``pytest -m gpu tests/gpu/training``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlkit.data.batch import Batch
from rlkit.hardware import device as hw

from .conftest import VOCAB

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(hw.device_type() == "cpu", reason="needs a GPU"),
]

P, R = 8, 8
PROMPTS = [8, 3, 5, 1, 4, 8, 2, 6]
RESPONSES = [8, 2, 7, 5, 1, 3, 8, 4]


def _batch() -> Batch:
    gen = torch.Generator().manual_seed(0)
    b = len(PROMPTS)
    prompts = torch.zeros(b, P, dtype=torch.long)
    responses = torch.zeros(b, R, dtype=torch.long)
    for i, (pl, rl) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        prompts[i, P - pl :] = torch.randint(3, VOCAB, (pl,), generator=gen)
        responses[i, :rl] = torch.randint(3, VOCAB, (rl,), generator=gen)
    attention_mask = torch.cat([prompts != 0, responses != 0], dim=1).long()
    response_mask = (responses != 0).float()
    return Batch(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "advantages": torch.tensor([1.0, -1.0] * (b // 2))[:, None] * response_mask,
        },
        meta={"temperature": 1.0},
    )


def _reference_logprobs(path: Path, batch: Batch) -> torch.Tensor:
    from rlkit.models import load_causal_lm

    model = load_causal_lm(str(path))
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"]).float()
    logp = logits[:, P - 1 : -1].log_softmax(-1).gather(-1, batch["responses"][..., None]).squeeze(-1)
    return logp * batch["attention_mask"][:, P:]


def test_bf16_log_probs_close_to_fp32_reference(model_dir: Path) -> None:
    from rlkit.training.actor import ActorRole

    batch = _batch()
    actor = ActorRole(str(model_dir), total_steps=4, micro_batch_tokens=40)
    assert actor.engine.compute_dtype == torch.bfloat16 and actor.engine.device.type == "cuda"
    got = actor.compute_log_prob(batch)["old_log_probs"]
    torch.testing.assert_close(got, _reference_logprobs(model_dir, batch), atol=0.1, rtol=0.05)
    before = got
    for _ in range(3):
        metrics = actor.update(batch)
    assert metrics["actor/grad_norm"] > 0 and metrics["actor/skipped_steps"] == 0
    after = actor.compute_log_prob(batch)["old_log_probs"]
    mask = batch["response_mask"].bool()
    assert ((after - before)[mask] * batch["advantages"][mask]).gt(0).float().mean() > 0.8


@pytest.mark.parametrize("offload", [{"param_offload": True}, {"optimizer_offload": True}])
def test_offload_trains_like_no_offload(model_dir: Path, offload: dict[str, bool]) -> None:
    from rlkit.training.actor import ActorRole
    from rlkit.training.ref import RefRole

    batch = _batch()
    results = []
    for extra in ({}, offload):
        actor = ActorRole(
            str(model_dir), dtype="float32", lr=1e-3, total_steps=4, micro_batch_tokens=40, **extra
        )
        metrics = [actor.update(batch) for _ in range(2)]
        params = {k: v.float().cpu() for k, v in actor.named_full_tensors(torch.float32)}
        results.append((metrics, params))
        if extra.get("param_offload"):
            shard = next(iter(actor.engine.module.parameters())).to_local()
            assert shard.device.type == "cpu"
    (m_plain, p_plain), (m_off, p_off) = results
    for a, b in zip(m_plain, m_off, strict=True):
        assert a["actor/grad_norm"] == pytest.approx(b["actor/grad_norm"], rel=1e-4)
    for name in p_plain:
        torch.testing.assert_close(p_off[name], p_plain[name], atol=1e-5, rtol=1e-4)
    ref = RefRole(str(model_dir), param_offload=True)
    torch.testing.assert_close(
        ref.compute_ref_log_prob(batch)["ref_log_prob"],
        _reference_logprobs(model_dir, batch),
        atol=0.1,
        rtol=0.05,
    )


def test_compiled_layers_train_like_eager(model_dir: Path) -> None:
    from rlkit.training.actor import ActorRole

    batch = _batch()
    runs = []
    for compiled in (False, True):
        actor = ActorRole(str(model_dir), total_steps=4, micro_batch_tokens=40, torch_compile=compiled)
        logp = actor.compute_log_prob(batch)["old_log_probs"]
        metrics = [actor.update(batch) for _ in range(2)]
        runs.append((logp, metrics, [n for n, _ in actor.named_full_tensors()]))
    (lp_eager, m_eager, names_eager), (lp_comp, m_comp, names_comp) = runs
    assert names_comp == names_eager  # no _orig_mod prefixes
    torch.testing.assert_close(lp_comp, lp_eager, atol=0.05, rtol=0.05)
    for a, b in zip(m_eager, m_comp, strict=True):
        assert b["actor/pg_loss"] == pytest.approx(a["actor/pg_loss"], rel=0.05, abs=1e-3)
        assert b["actor/grad_norm"] == pytest.approx(a["actor/grad_norm"], rel=0.05)
