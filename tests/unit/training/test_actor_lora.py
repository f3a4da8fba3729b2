"""A LoRA actor: only adapters train, its merged weights are PEFT's merge, its reference is the base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlkit.training.actor import ActorRole
from rlkit.training.lora import write_adapter_folder
from rlkit.training.ref import RefRole

from ._builders import rl_batch

pytestmark = pytest.mark.usefixtures("process_group")

P, R = 6, 5
PROMPTS = [6, 3, 5, 1, 4, 6, 2, 5]
RESPONSES = [5, 2, 4, 5, 1, 3, 5, 2]
LORA = {"lora_rank": 4, "lora_alpha": 8, "lora_target_modules": ["all-linear"]}


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, process_group: None) -> ActorRole:
    """A LoRA actor after three policy updates (so every ``B`` has left zero)."""
    actor = ActorRole(
        str(tiny_model_dir),
        lr=1e-2,
        total_steps=10,
        micro_batch_tokens=64,
        seed=3,
        **LORA,  # type: ignore[arg-type]
    )
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=2)
    for _ in range(3):
        actor.update(batch)
    return actor


def _base_name(name: str) -> str:
    return name.replace(".base_layer.", ".")


def test_only_adapters_train_and_sit_in_the_optimizer(tiny_model_dir: Path, trained: ActorRole) -> None:
    names = {id(p): n for n, p in trained.engine.module.named_parameters()}
    trainable = [names[id(p)] for p in trained.engine.params]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * 7 * 2  # A and B of 7 linear layers in 2 decoder layers
    state = trained.engine.optimizer.state
    assert {id(p) for p in state} == {id(p) for p in trained.engine.params}
    base = RefRole(str(tiny_model_dir), dtype="float32").module.state_dict()
    raw = dict(trained.engine.named_full_tensors(torch.float32))
    for name, tensor in raw.items():
        if ".lora_" not in name:
            torch.testing.assert_close(tensor, base[_base_name(name)], atol=0, rtol=0, msg=name)
    assert all(raw[n].abs().sum() > 0 for n in raw if ".lora_B." in n)


def test_merged_push_equals_peft_merge(tiny_model_dir: Path, trained: ActorRole, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = write_adapter_folder(
        tmp_path / "adapter",
        trained.adapter_tensors(),
        rank=trained.lora_rank,
        alpha=trained.lora_alpha,
        target_modules=trained.lora_targets,
        base_model=str(tiny_model_dir),
    )
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    want = PeftModel.from_pretrained(hf, adapter).merge_and_unload().state_dict()
    pushed = dict(trained.named_full_tensors(torch.float32))
    assert set(pushed) == set(want) - {"lm_head.weight"}  # HF names; the tied head comes once
    for name, tensor in pushed.items():
        # both fold W + (alpha / r) * B @ A in fp32, in their own order of operations
        torch.testing.assert_close(tensor, want[name], atol=1e-6, rtol=1e-6, msg=name)
    bf16 = dict(trained.named_full_tensors(torch.bfloat16))
    assert all(bf16[n].dtype == torch.bfloat16 and torch.equal(bf16[n], pushed[n].bfloat16()) for n in pushed)


def test_reference_is_the_base_and_adapters_come_back(tiny_model_dir: Path, trained: ActorRole) -> None:
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=5)
    base = RefRole(str(tiny_model_dir), micro_batch_tokens=16).compute_ref_log_prob(batch, 0.8)
    got = trained.compute_ref_log_prob(batch, 0.8)
    torch.testing.assert_close(got["ref_log_prob"], base["ref_log_prob"], atol=1e-6, rtol=1e-6)
    policy = trained.compute_log_prob(batch, 0.8, with_entropy=False)["old_log_probs"]
    assert (policy - got["ref_log_prob"]).abs().max() > 1e-3  # the adapters are on again
    assert all(p.requires_grad for p in trained.engine.params)


def test_a_full_actor_has_no_reference_of_its_own(tiny_model_dir: Path) -> None:
    actor = ActorRole(str(tiny_model_dir), total_steps=1)
    with pytest.raises(ValueError, match="only a LoRA actor"):
        actor.compute_ref_log_prob(rl_batch(PROMPTS, RESPONSES, P, R))
