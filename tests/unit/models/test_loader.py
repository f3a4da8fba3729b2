"""load_causal_lm: built-in tiny, seeded random init, routing native vs transformers, the fallback wrapper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rlkit.errors import UserError
from rlkit.models import (
    CausalLM,
    HFCausalLM,
    copy_checkpoint,
    load_causal_lm,
    load_state_dict,
    materialize,
    model_config,
    native_unsupported_reason,
    pack_padded,
    save_hf,
    tiny_config,
    token_logprobs,
)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 96, (3, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padded
    mask[2, 5:] = 0  # right padded
    return ids, mask


def test_builtin_tiny_random_init_is_seeded() -> None:
    a = load_causal_lm("builtin:tiny", init="random", seed=0)
    b = load_causal_lm("builtin:tiny", seed=0)  # no packaged checkpoint: same as random
    c = load_causal_lm("builtin:tiny", init="random", seed=1)
    assert isinstance(a, CausalLM) and not a.training and a.config == tiny_config()
    assert a.config.architecture == "qwen2" and a.config.tie_word_embeddings
    assert a.lm_head.weight is a.model.embed_tokens.weight
    for (name, pa), pb, pc in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if name.endswith("norm.weight"):
            assert torch.equal(pa, torch.ones_like(pa))
        elif name.endswith("bias"):
            assert not pa.any()
        else:
            assert not torch.equal(pa, pc) and abs(pa.std().item() - 0.02) < 0.004, name
    assert a.model.rotary.inv_freq.dtype == torch.float32
    half = load_causal_lm("builtin:tiny", dtype=torch.bfloat16)
    assert half.lm_head.weight.dtype == torch.bfloat16 and half.model.rotary.inv_freq.dtype == torch.float32


def test_bad_init_and_unknown_builtin() -> None:
    with pytest.raises(UserError, match="init"):
        load_causal_lm("builtin:tiny", init="zeros")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="builtin:tiny"):
        load_causal_lm("builtin:nano")


def test_meta_device_then_materialize_and_copy(tmp_path: Path) -> None:
    src = save_hf(load_causal_lm("builtin:tiny", init="random", seed=5), tmp_path / "m")
    model = load_causal_lm(src, device="meta")
    assert all(p.is_meta for p in model.parameters())
    materialize(model, model.config, "cpu")
    copy_checkpoint(model, src)
    for name, tensor in load_state_dict(src).items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_packaged_builtin_checkpoint_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rlkit.models.tiny as tiny

    saved = load_causal_lm("builtin:tiny", init="random", seed=7)
    save_hf(saved, tmp_path / "tiny-arith")
    monkeypatch.setattr(tiny, "ASSETS_DIR", tmp_path)
    loaded = load_causal_lm("builtin:tiny-arith", seed=0)
    assert torch.equal(loaded.lm_head.weight, saved.lm_head.weight)
    # builtin:tiny is always the random-init architecture
    assert not torch.equal(load_causal_lm("builtin:tiny", seed=0).lm_head.weight, saved.lm_head.weight)
    monkeypatch.setattr(tiny, "ASSETS_DIR", tmp_path / "nowhere")
    with pytest.raises(UserError, match="missing from this install"):
        load_causal_lm("builtin:tiny-arith")


@pytest.mark.parametrize("name", ["builtin:tiny-arith", "builtin:tiny"])
def test_export_builtin_writes_a_folder_transformers_loads(name: str, tmp_path: Path) -> None:
    """What the vLLM engines load for a built-in model: same weights, the tokenizer and its template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.models.loader import export_builtin
    from rlkit.models.tokenizer import build_tokenizer

    folder = Path(export_builtin(name, tmp_path / "m", seed=3))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["head_dim"] == 32  # vLLM's CPU attention needs >= 32
    ours = load_causal_lm(name, seed=3).state_dict()
    theirs = load_state_dict(folder)
    assert set(theirs) <= set(ours) and all(torch.equal(ours[k], theirs[k]) for k in theirs)  # bit-identical
    tok = AutoTokenizer.from_pretrained(folder)
    chat = [{"role": "user", "content": "1+1="}]
    assert tok.apply_chat_template(chat, tokenize=False) == build_tokenizer().apply_chat_template(
        chat, tokenize=False
    )
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids, _ = _batch()
    mask = torch.ones_like(ids)  # unpadded: both sides number positions the same way
    with torch.no_grad():
        expected = load_causal_lm(name, seed=3)(ids, mask)
        got = hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)  # fp32, summation order only


def test_shipped_tiny_arith_answers_some_problems() -> None:
    """The packaged warm start ships with the package and loads as the tiny architecture."""
    from rlkit.models.tiny import packaged_checkpoint

    assert packaged_checkpoint("tiny-arith") is not None
    model = load_causal_lm("builtin:tiny-arith")
    assert model.config.num_layers == 4 and model.config.hidden_size == 128


def test_shipped_teacher_is_the_larger_architecture_with_the_students_vocabulary() -> None:
    """builtin:tiny-arith-teacher: tiny_config's architecture (what `rlkit plan` reads) in bf16, 2-3x larger."""
    from rlkit.models.tiny import tiny_config

    teacher = load_causal_lm("builtin:tiny-arith-teacher")
    assert teacher.config == tiny_config("tiny-arith-teacher")
    assert teacher.config.vocab_size == tiny_config("tiny-arith").vocab_size
    ratio = sum(p.numel() for p in teacher.parameters()) / sum(
        p.numel() for p in load_causal_lm("builtin:tiny-arith").parameters()
    )
    assert 2.0 <= ratio <= 3.0, ratio


def test_routing_native_vs_fallback() -> None:
    base = tiny_config().to_hf()
    assert native_unsupported_reason(base) is None
    assert native_unsupported_reason({**base, "model_type": "mistral"}) is not None
    assert "sliding" in str(native_unsupported_reason({**base, "use_sliding_window": True}))
    assert "rope" in str(
        native_unsupported_reason({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    )
    assert native_unsupported_reason({**base, "hidden_act": "gelu"}) is not None


def _write_config(folder: Path, config: Any) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    return folder


def test_model_config_and_random_fallback(tmp_path: Path) -> None:
    from transformers import GPT2Config

    gpt2 = GPT2Config(
        vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    folder = _write_config(tmp_path / "gpt2", gpt2)
    cfg = model_config(folder)
    assert (cfg.architecture, cfg.num_layers, cfg.hidden_size, cfg.vocab_size) == ("gpt2", 2, 32, 96)
    assert model_config("builtin:tiny") == tiny_config()
    a = load_causal_lm(folder, init="random", seed=3)
    b = load_causal_lm(folder, init="random", seed=3)
    assert isinstance(a, HFCausalLM)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    with pytest.raises(UserError, match="holds no model.safetensors"):
        load_causal_lm(folder)


def test_logit_scaling_architectures_are_refused(tmp_path: Path) -> None:
    from transformers import CohereConfig

    cohere = CohereConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        logit_scale=0.25,
    )
    with pytest.raises(UserError, match="logit_scale"):
        load_causal_lm(_write_config(tmp_path / "cohere", cohere), init="random")


@pytest.mark.parametrize("arch", ["gpt2", "mistral"])
def test_fallback_wrapper_has_the_native_interface(tmp_path: Path, arch: str) -> None:
    from transformers import AutoModelForCausalLM, GPT2Config, MistralConfig

    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    else:
        config = MistralConfig(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=None,
        )
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    save_hf(HFCausalLM(reference), tmp_path / arch, max_shard_bytes=20_000)
    model = load_causal_lm(tmp_path / arch)
    assert isinstance(model, HFCausalLM) and not model.training
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert (model.config.vocab_size, model.config.hidden_size, model.config.num_layers) == (96, 32, 2)

    ids, mask = _batch()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        logits = model(ids, mask)
    keep = mask.bool()
    torch.testing.assert_close(logits[keep], expected[keep], rtol=0, atol=1e-5)
    assert not logits[~keep].any()

    ids_T, pos_T, cu, _ = pack_padded(ids, mask)
    model.train()

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.set_gradient_checkpointing(checkpointing)
        hidden = model.forward_packed(ids_T, pos_T, cu)
        lp, _ = token_logprobs(hidden, model.lm_head.weight, ids_T)
        torch.testing.assert_close(
            lp, logits[keep].log_softmax(-1).gather(-1, ids_T[:, None])[:, 0], rtol=0, atol=1e-5
        )
        lp.sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
