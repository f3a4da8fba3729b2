"""save_hf / load_state_dict: bit-exact round trips, transformers compatibility, clear errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from rlkit.errors import UserError
from rlkit.models import (
    CausalLM,
    DecoderConfig,
    build_tokenizer,
    load_causal_lm,
    load_hf_config,
    load_state_dict,
    save_hf,
)


def _native(hf_model: torch.nn.Module) -> CausalLM:
    model = CausalLM(DecoderConfig.from_hf(hf_model.config.to_dict()))
    model.load_state_dict(hf_model.state_dict())
    return model.eval()


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("max_shard_bytes", [5 * 2**30, 40_000], ids=["single", "sharded"])
def test_round_trip_is_bit_exact(
    tmp_path: Path, tie: bool, max_shard_bytes: int, make_hf_model: Callable[..., Any]
) -> None:
    model = _native(make_hf_model("qwen2", tie=tie))
    out = save_hf(model, tmp_path / "ckpt", max_shard_bytes=max_shard_bytes)
    sharded = (out / "model.safetensors.index.json").is_file()
    assert sharded == (max_shard_bytes < 2**20)
    assert sharded != (out / "model.safetensors").is_file()
    if sharded:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 2
    loaded = load_state_dict(out)
    expected = model.state_dict()
    assert ("lm_head.weight" in loaded) == (not tie)  # a tied head is omitted, as HF does
    for name, tensor in loaded.items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name
    again = load_causal_lm(out)
    assert isinstance(again, CausalLM)
    assert (again.lm_head.weight is again.model.embed_tokens.weight) == tie
    for (name, a), (_, b) in zip(again.state_dict().items(), expected.items(), strict=True):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob(".ckpt*")), "temporary folder left behind"


@torch.no_grad()
def test_transformers_loads_what_we_save(
    tmp_path: Path, family: str, make_hf_model: Callable[..., Any]
) -> None:
    from transformers import AutoModelForCausalLM

    model = _native(make_hf_model(family, tie=family == "qwen2"))
    out = save_hf(model, tmp_path / family, max_shard_bytes=60_000)
    theirs, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    theirs.eval()
    ids, mask = _ids()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = theirs(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    torch.testing.assert_close(model(ids, mask)[mask.bool()], expected[mask.bool()], rtol=0, atol=1e-5)


def test_dtype_tokenizer_and_generation_config(tmp_path: Path) -> None:
    model = load_causal_lm("builtin:tiny", init="random")
    tokenizer = build_tokenizer()
    out = save_hf(
        model, tmp_path / "m", tokenizer=tokenizer, dtype=torch.bfloat16, generation_config={"top_p": 0.9}
    )
    assert load_hf_config(out)["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_state_dict(out).values())
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [256, 258] and gen["pad_token_id"] == 256 and gen["top_p"] == 0.9
    assert (out / "tokenizer.json").is_file()
    assert load_causal_lm(out, dtype=torch.bfloat16).lm_head.weight.dtype == torch.bfloat16


def test_save_replaces_an_existing_folder(tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    save_hf(load_causal_lm("builtin:tiny", init="random", seed=1), out)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _folder(tmp_path: Path, config: bool = True) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    if config:
        (folder / "config.json").write_text(json.dumps(load_hf_config("builtin:tiny")))
    return folder


def test_missing_folder_and_config_raise_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such folder"):
        load_causal_lm(tmp_path / "nope")
    with pytest.raises(UserError, match="no config.json"):
        load_causal_lm(_folder(tmp_path, config=False))


def test_pickle_only_weights_are_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UserError, match="convert them to safetensors"):
        load_causal_lm(folder)
    with pytest.raises(UserError, match="convert them to safetensors"):
        load_state_dict(folder)


def test_missing_weights_bad_index_and_missing_shard(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    with pytest.raises(UserError, match="holds no model.safetensors"):
        load_causal_lm(folder)
    (folder / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt safetensors index"):
        load_state_dict(folder)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "shard-1.safetensors"}})
    )
    with pytest.raises(UserError, match="missing shard"):
        load_state_dict(folder)


def test_corrupt_file_and_mismatched_weights(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(UserError, match="corrupt safetensors file"):
        load_causal_lm(folder)
    save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, str(folder / "model.safetensors"))
    with pytest.raises(UserError, match="has shape"):
        load_causal_lm(folder)
    save_file({"model.norm.weight": torch.zeros(128)}, str(folder / "model.safetensors"))
    with pytest.raises(UserError, match="does not match its config"):
        load_causal_lm(folder)
