"""ValueModel: backbone from a causal LM, head init, HF token-classification compatible save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlkit.errors import UserError
from rlkit.models import ValueModel, load_causal_lm, pack_padded, save_hf


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 259, (3, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[2, 6:] = 0
    return ids, mask


@torch.no_grad()
def test_backbone_comes_from_the_causal_lm(tmp_path: Path) -> None:
    lm = load_causal_lm("builtin:tiny", init="random", seed=2)
    save_hf(lm, tmp_path / "lm")
    critic = ValueModel.from_causal_lm(tmp_path / "lm", seed=0)
    assert not critic.training
    for name, tensor in critic.model.state_dict().items():
        assert torch.equal(tensor, lm.model.state_dict()[name]), name
    assert critic.score.weight.shape == (1, 128) and not critic.score.bias.any()
    assert abs(critic.score.weight.std().item() - 1e-3) < 3e-4

    ids, mask = _batch()
    ids_T, pos_T, cu, keep = pack_padded(ids, mask)
    values_T = critic.forward_packed(ids_T, pos_T, cu)
    assert values_T.dtype == torch.float32 and values_T.shape == ids_T.shape
    hidden = lm.forward_packed(ids_T, pos_T, cu)
    torch.testing.assert_close(
        values_T, (hidden @ critic.score.weight.T + critic.score.bias)[:, 0], rtol=0, atol=1e-6
    )
    values_BL = critic(ids, mask)
    torch.testing.assert_close(values_BL[keep], values_T, rtol=0, atol=1e-6)
    assert not values_BL[~keep].any()


def test_zero_head_and_random_backbone() -> None:
    critic = ValueModel.from_causal_lm("builtin:tiny", init="random", head_init="zeros")
    ids, mask = _batch()
    assert not critic(ids, mask).any()
    critic.train()
    critic(ids, mask).sum().backward()
    assert critic.score.weight.grad is not None and critic.score.weight.grad.abs().sum() > 0
    with pytest.raises(UserError, match="head init"):
        ValueModel.from_causal_lm("builtin:tiny", head_init="uniform")  # type: ignore[arg-type]


@torch.no_grad()
def test_saved_value_model_is_hf_token_classification(tmp_path: Path) -> None:
    from transformers import AutoModelForTokenClassification

    critic = ValueModel.from_causal_lm("builtin:tiny", init="random", seed=4)
    critic.score.bias.fill_(0.25)
    out = save_hf(critic, tmp_path / "critic")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForTokenClassification"]
    theirs, info = AutoModelForTokenClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask = _batch()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = theirs.eval()(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[..., 0]
    ours = critic(ids, mask)
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], expected[keep], rtol=0, atol=1e-5)

    again = ValueModel.from_causal_lm(out, head_init="zeros")  # the saved head wins over head_init
    for name, tensor in critic.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_non_native_architecture_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(UserError, match="native architecture"):
        ValueModel.from_causal_lm(folder)
