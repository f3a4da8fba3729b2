"""LoRA through PEFT: only adapters train, the merged model equals the adapted one, PEFT loads the adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlkit.errors import UserError
from rlkit.models import CausalLM, init_weights, load_causal_lm, save_hf
from rlkit.training.lora import inject_lora, merge_lora_tensors, resolve_target_modules, write_adapter_folder
from rlkit.training.sft import SFTRole, sft_batch

from ._builders import tiny_decoder_config
from ._sft_builders import LENGTHS, conversations, reference_nll

pytestmark = pytest.mark.usefixtures("process_group")

LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_all_linear_skips_the_lm_head_and_names_are_checked() -> None:
    model = CausalLM(tiny_decoder_config(tied=False))
    assert resolve_target_modules(model, ["all-linear"]) == LINEARS
    assert resolve_target_modules(model, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
    with pytest.raises(UserError, match="no linear module named 'lm_head'"):
        resolve_target_modules(model, ["lm_head"])
    with pytest.raises(UserError, match="lora_rank"):
        inject_lora(model, 0, 16, ["all-linear"])


def test_only_adapters_train_and_start_as_a_no_op() -> None:
    model = CausalLM(tiny_decoder_config())
    init_weights(model, seed=0)
    ids = torch.randint(3, 300, (2, 7))
    before = model(ids)
    assert inject_lora(model, 4, 8, ["q_proj", "down_proj"]) == ["down_proj", "q_proj"]
    trainable = sorted(
        {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    )
    assert trainable == ["down_proj", "q_proj"]
    assert all(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    torch.testing.assert_close(model(ids), before)  # B starts at zero


def _lora_role(path: Path, **kw: object) -> SFTRole:
    settings: dict[str, object] = {
        "lr": 2e-2,
        "total_steps": 10,
        "micro_batch_tokens": 30,
        "lora_rank": 4,
        "lora_alpha": 8,
        "seed": 3,
    }
    settings.update(kw)
    return SFTRole(str(path), **settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained_lora(tiny_model_dir: Path, process_group: None) -> tuple[SFTRole, dict[str, torch.Tensor]]:
    """A LoRA role after three steps (so B != 0), with the batch it trained on."""
    role = _lora_role(tiny_model_dir)
    c = conversations(LENGTHS, seed=5)
    for _ in range(3):
        role.train_step(sft_batch(c["input_ids"], c["attention_mask"], c["loss_mask"]))
    return role, c


def test_lora_trains_only_adapters(tiny_model_dir: Path, trained_lora: tuple[SFTRole, dict]) -> None:
    role, _ = trained_lora
    base = load_causal_lm(str(tiny_model_dir)).state_dict()
    raw = dict(role.engine.named_full_tensors(torch.float32))
    for name, tensor in raw.items():
        if ".lora_" not in name:
            torch.testing.assert_close(tensor, base[name.replace(".base_layer.", ".")], msg=name)
    assert any(t.abs().sum() > 0 for n, t in raw.items() if ".lora_B." in n)
    assert len(role.engine.params) == 2 * len(LINEARS) * 2  # A and B of 7 linears in 2 layers


def test_merged_model_equals_the_adapted_model(
    tiny_model_dir: Path, trained_lora: tuple[SFTRole, dict]
) -> None:
    role, c = trained_lora
    merged = dict(role.named_full_tensors(torch.float32))
    base = load_causal_lm(str(tiny_model_dir))
    assert set(merged) == {n for n, _ in base.named_parameters()}  # HF names, tied head once
    model = CausalLM(base.config)
    model.load_state_dict(merged, strict=False)
    batch = sft_batch(c["input_ids"], c["attention_mask"], c["loss_mask"])
    adapted = role.eval_loss(batch)["val/loss"]
    assert adapted == pytest.approx(float(reference_nll(model, c)), rel=1e-5)
    assert adapted < float(reference_nll(base, c))  # the adapters did learn something


def test_merge_handles_transposed_conv1d_weights() -> None:
    a, b = torch.randn(2, 5), torch.randn(3, 2)
    tensors = {
        "h.0.c_attn.base_layer.weight": torch.zeros(5, 3),  # Conv1D stores (in, out)
        "h.0.c_attn.base_layer.bias": torch.ones(3),
        "h.0.c_attn.lora_A.default.weight": a,
        "h.0.c_attn.lora_B.default.weight": b,
        "wte.weight": torch.ones(4, 5),
    }
    merged = merge_lora_tensors(tensors, scaling=2.0)
    assert set(merged) == {"h.0.c_attn.weight", "h.0.c_attn.bias", "wte.weight"}
    torch.testing.assert_close(merged["h.0.c_attn.weight"], 2.0 * (b @ a).T)


def test_peft_loads_the_adapter_folder(
    tiny_model_dir: Path, trained_lora: tuple[SFTRole, dict], tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    role, c = trained_lora
    out = write_adapter_folder(
        tmp_path / "adapter",
        role.adapter_tensors(),
        rank=role.lora_rank,
        alpha=role.lora_alpha,
        target_modules=role.lora_targets,
        base_model=str(tiny_model_dir),
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    assert sorted(config["target_modules"]) == LINEARS and config["task_type"] == "CAUSAL_LM"
    model = CausalLM(load_causal_lm(str(tiny_model_dir)).config)
    model.load_state_dict(dict(role.named_full_tensors(torch.float32)), strict=False)
    save_hf(model, tmp_path / "merged")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out).eval()
    merged_hf = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        want = merged_hf(input_ids=c["input_ids"][:2, :4]).logits
        got = peft_model(input_ids=c["input_ids"][:2, :4]).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
