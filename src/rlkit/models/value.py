"""Value model (PPO critic): the native decoder backbone plus a scalar ``score`` head per token.

Parameter names follow Hugging Face's ``*ForTokenClassification`` with one label (``model.*`` and
``score.weight``/``score.bias``), which is what verl's critic loads, so ``save_hf`` writes a folder
that ``AutoModelForTokenClassification`` loads with equal outputs, and such a folder loads back.

Shape legend: T = packed tokens, B = batch, L = padded length, D = hidden size.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import nn

from rlkit.errors import UserError
from rlkit.models.decoder import ARCHITECTURES, DecoderConfig, DecoderModel, pack_padded
from rlkit.models.hf_io import load_hf_config
from rlkit.models.loader import copy_checkpoint, init_weights, materialize, native_unsupported_reason
from rlkit.models.tiny import builtin_name, packaged_checkpoint, tiny_config
from rlkit.models.tokenizer import BUILTIN_PREFIX

HeadInit = Literal["normal", "zeros"]
HEAD_INIT_STD = 1e-3


class ValueModel(nn.Module):
    """Decoder backbone + ``score = nn.Linear(hidden, 1)``; values are computed in fp32."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = DecoderModel(cfg)
        self.score = nn.Linear(cfg.hidden_size, 1)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.model.gradient_checkpointing = enabled

    def forward_packed(
        self, input_ids_T: torch.Tensor, position_ids_T: torch.Tensor, cu_seqlens: torch.Tensor
    ) -> torch.Tensor:
        """Value of every packed token.

        Shape:
            input_ids_T, position_ids_T: (T,); cu_seqlens: (N + 1,) int32 offsets. Returns (T,) fp32.
        """
        hidden_TD = self.model(input_ids_T, position_ids_T, cu_seqlens)
        return self.score(hidden_TD).squeeze(-1).float()

    def forward(
        self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Values (B, L) fp32 of a padded batch (left or right padding); padded positions get zeros."""
        if attention_mask_BL is None:
            attention_mask_BL = torch.ones_like(input_ids_BL)
        input_ids_T, position_ids_T, cu_seqlens, keep = pack_padded(input_ids_BL, attention_mask_BL)
        values_T = self.forward_packed(input_ids_T, position_ids_T, cu_seqlens)
        out = values_T.new_zeros(input_ids_BL.shape)
        out[keep] = values_T
        return out

    def hf_config_dict(self) -> dict[str, Any]:
        """``config.json`` of the equivalent ``*ForTokenClassification`` with one label."""
        hf = self.config.to_hf()
        hf["architectures"] = [
            ARCHITECTURES[self.config.architecture].replace("ForCausalLM", "ForTokenClassification")
        ]
        hf["id2label"] = {"0": "LABEL_0"}
        hf["label2id"] = {"LABEL_0": 0}
        hf["classifier_dropout"] = 0.0  # the native model has no dropout; keep HF's forward identical
        return hf

    @classmethod
    def from_causal_lm(
        cls,
        path: str | os.PathLike[str],
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        init: Literal["pretrained", "random"] = "pretrained",
        seed: int = 0,
        head_init: HeadInit = "normal",
    ) -> ValueModel:
        """A value model whose backbone comes from a causal-LM (or value-model) folder.

        The LM head is dropped. The ``score`` head is loaded when the folder has one (a value model
        saved by ``save_hf``); otherwise it is initialised by ``head_init``: ``"normal"`` (default)
        draws the weight from normal(0, 1e-3) with a zero bias, so initial values are near zero
        yet the backbone gets a gradient from the first step; ``"zeros"`` zeroes both. (verl's
        critic instead keeps transformers' token-classification init, normal(0, 0.02).)
        ``builtin:tiny`` and ``init="random"`` behave as in ``load_causal_lm``. Returned in eval mode.

        Raises:
            UserError: missing or bad folder, or an architecture the native decoder does not run.
        """
        if init not in ("pretrained", "random"):
            raise UserError(f"critic init must be 'pretrained' or 'random', got {init!r}")
        path = os.fspath(path)
        weights: str | None = None
        if path.startswith(BUILTIN_PREFIX):
            packaged = packaged_checkpoint(builtin_name(path))
            cfg = tiny_config(path)
            if packaged is not None and init == "pretrained":
                cfg, weights = DecoderConfig.from_hf(load_hf_config(packaged)), str(packaged)
        else:
            hf = load_hf_config(path)
            reason = native_unsupported_reason(hf)
            if reason is not None:
                raise UserError(
                    f"critic: the value model needs a native architecture (llama/qwen2/qwen3), {path!r} has {reason}"
                )
            cfg = DecoderConfig.from_hf(hf)
            weights = path if init == "pretrained" else None
        with torch.device("meta"):
            model = cls(cfg)
        model.to(dtype)
        materialize(model, cfg, device)
        loaded = (
            copy_checkpoint(model, weights, ignore_prefixes=("lm_head.",), optional_prefixes=("score.",))
            if weights
            else set()
        )
        if weights is None:
            init_weights(model, seed)
        if "score.weight" not in loaded:
            _init_head(model.score, head_init, seed)
        elif "score.bias" not in loaded:  # a head saved without bias (token_classification_bias=False)
            with torch.no_grad():
                model.score.bias.zero_()
        return model.eval()


def _init_head(head: nn.Linear, head_init: HeadInit, seed: int) -> None:
    with torch.no_grad():
        head.bias.zero_()
        if head_init == "zeros":
            head.weight.zero_()
        elif head_init == "normal":
            gen = torch.Generator(device=head.weight.device).manual_seed(seed)
            head.weight.normal_(0.0, HEAD_INIT_STD, generator=gen)
        else:
            raise UserError(f"critic head init must be 'normal' or 'zeros', got {head_init!r}")


def load_value_model(path: str | os.PathLike[str], **kwargs: Any) -> ValueModel:
    """Alias of ``ValueModel.from_causal_lm`` (same keywords)."""
    return ValueModel.from_causal_lm(path, **kwargs)
