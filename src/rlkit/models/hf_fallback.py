"""Fallback for architectures the native decoder does not implement: transformers behind rlkit's interface.

``HFCausalLM`` wraps an ``AutoModelForCausalLM`` and exposes the native ``CausalLM`` methods. Its
submodules are registered under Hugging Face's own names (``transformer.h.0...``, ``lm_head``), so
``state_dict()`` keys equal the checkpoint's and the checkpoint code treats both kinds alike.
Packed inputs are unpacked to a right-padded batch internally, so it is slower than native.

Shape legend: T = packed tokens, B = batch, L = padded length, D = hidden size, V = vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlkit.errors import UserError
from rlkit.models.decoder import DecoderConfig
from rlkit.models.hf_io import checkpoint_files

# Config keys of architectures whose logits are not ``lm_head(hidden)``: a log-prob computed from
# forward_packed + lm_head would silently differ from the model's own. Soft-capping (Gemma-2) is
# applied by ``token_logprobs`` (``HFCausalLM.logit_softcap``); the others are refused.
_SOFTCAP_KEY = "final_logit_softcapping"
_LOGIT_TRANSFORMS = ("logit_scale", "logits_scaling", "output_multiplier_scale")


def foreign_config(hf_config: Any) -> DecoderConfig:
    """A ``DecoderConfig`` describing a transformers config (``architecture`` = its ``model_type``)."""
    c = hf_config.get_text_config()
    hidden, heads = c.hidden_size, c.num_attention_heads
    return DecoderConfig(
        architecture=hf_config.model_type,
        vocab_size=c.vocab_size,
        hidden_size=hidden,
        intermediate_size=getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden,
        num_layers=c.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        head_dim=getattr(c, "head_dim", None) or hidden // heads,
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        max_position_embeddings=getattr(c, "max_position_embeddings", None) or 4096,
        bos_token_id=getattr(c, "bos_token_id", None),
        eos_token_id=getattr(c, "eos_token_id", None),
        pad_token_id=getattr(c, "pad_token_id", None),
        extra={"hf_model_type": hf_config.model_type},
    )


def logit_softcap(hf_config: Any) -> float | None:
    """The cap of ``logits = cap * tanh(lm_head(hidden) / cap)`` (Gemma-2), or None for plain logits."""
    value = getattr(hf_config.get_text_config(), _SOFTCAP_KEY, None)
    return float(value) if value else None


def check_plain_logits(hf_config: Any) -> None:
    """Refuse architectures whose logits are neither ``lm_head(hidden)`` nor soft-capped (logit scales).

    Raises:
        UserError: the config sets one of the logit transforms rlkit does not apply.
    """
    text_config = hf_config.get_text_config()
    for key in _LOGIT_TRANSFORMS:
        value = getattr(text_config, key, None)
        if value not in (None, 1, 1.0):
            raise UserError(
                f"model_type {hf_config.model_type!r} transforms its logits ({key}={value}); "
                "rlkit's log-probs take logits = lm_head(hidden), soft-capped or not",
                hint="use a model without logit scaling (Llama, Qwen, Gemma-2, Mistral, Phi-3, ...)",
            )


def _quietly(load: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a transformers loader without its per-file progress bars (every worker loads the model)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load(*args, **kwargs)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _disable_dropout(model: nn.Module) -> None:
    """Zero every dropout: RL compares log-probs of the same policy across passes (old vs new,
    actor vs rollout), which dropout would make differ; the native decoder has none either."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            setattr(module, "attention_dropout", 0.0)  # noqa: B010 (a plain float attribute)


class HFCausalLM(nn.Module):
    """A transformers causal LM with the native ``CausalLM`` interface (dropout disabled).

    Build it with ``HFCausalLM.load`` (or ``load_causal_lm``, which picks it for non-native
    architectures). ``hf`` is the wrapped transformers model; its parameters are this module's.
    """

    hf: Any  # the transformers model (typed loosely: its methods depend on the architecture)

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        check_plain_logits(hf_model.config)
        object.__setattr__(self, "hf", hf_model)  # not a submodule: its children are registered below
        for name, child in hf_model.named_children():
            self._modules[name] = child  # bypasses the lm_head property, keeps HF's state_dict names
        own = {n for n, _ in hf_model.named_parameters(recurse=False)}
        if own:
            raise ValueError(f"{type(hf_model).__name__} has top-level parameters {own}; cannot wrap it")
        self.config = foreign_config(hf_model.config)
        # the training side's log-probs apply it as the model's own forward does
        self.logit_softcap = logit_softcap(hf_model.config)
        _disable_dropout(hf_model)

    @classmethod
    def load(
        cls,
        path: str,
        hf_config: Any,
        *,
        dtype: torch.dtype,
        device: str | torch.device,
        init: str,
        seed: int,
    ) -> HFCausalLM:
        """Load (``init="pretrained"``, safetensors only) or seeded-randomly build an HF causal LM."""
        from transformers import AutoModelForCausalLM

        check_plain_logits(hf_config)
        if init == "pretrained":
            checkpoint_files(path)  # a clear UserError for pickle-only or missing weights
            try:
                hf_model = _quietly(
                    AutoModelForCausalLM.from_pretrained, path, dtype=dtype, use_safetensors=True
                )
            except (OSError, ValueError) as exc:
                raise UserError(f"model.path: transformers cannot load {path!r}: {exc}") from exc
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
        return cls(hf_model.to(device)).eval()  # type: ignore[arg-type]

    @property
    def lm_head(self) -> nn.Linear:
        """The output embedding (``nn.Linear`` with weight (V, D))."""
        head: nn.Linear = self.hf.get_output_embeddings()
        return head

    def train(self, mode: bool = True) -> HFCausalLM:
        super().train(mode)
        self.hf.training = mode  # the wrapped top module is not a registered child
        return self

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        hf = self.hf
        if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5
            if enabled:
                hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                hf.activation_checkpointing_disable()
        elif enabled:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf.gradient_checkpointing_disable()

    def hf_config_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict (for ``save_hf``)."""
        return self.hf.config.to_dict()

    def forward(
        self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, L, V) of a padded batch (left or right padding); padded positions get zeros."""
        if attention_mask_BL is None:
            attention_mask_BL = torch.ones_like(input_ids_BL)
        position_ids = (attention_mask_BL.long().cumsum(-1) - 1).clamp(min=0)
        logits = self.hf(
            input_ids=input_ids_BL,
            attention_mask=attention_mask_BL,
            position_ids=position_ids,
            use_cache=False,
        ).logits
        return logits.masked_fill(~attention_mask_BL.bool()[..., None], 0.0)

    def forward_packed(
        self, input_ids_T: torch.Tensor, position_ids_T: torch.Tensor, cu_seqlens: torch.Tensor
    ) -> torch.Tensor:
        """Final hidden states (T, D) of packed sequences, computed as one right-padded batch.

        Shape:
            input_ids_T, position_ids_T: (T,); cu_seqlens: (N + 1,) offsets. Returns (T, D).
        """
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long().to(input_ids_T.device)
        max_len = int(lengths.max().item()) if lengths.numel() else 0
        mask_BL = torch.arange(max_len, device=input_ids_T.device)[None, :] < lengths[:, None]
        ids_BL = input_ids_T.new_zeros(mask_BL.shape)
        ids_BL[mask_BL] = input_ids_T
        pos_BL = position_ids_T.new_zeros(mask_BL.shape)
        pos_BL[mask_BL] = position_ids_T
        out = self.hf.base_model(
            input_ids=ids_BL, attention_mask=mask_BL.long(), position_ids=pos_BL, use_cache=False
        )
        return out.last_hidden_state[mask_BL]
