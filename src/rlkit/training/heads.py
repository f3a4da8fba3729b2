"""Root modules that FSDP2 wraps: a model's own children plus a forward that ends at the heads.

FSDP2 unshards a module's parameters in the pre-forward hook of its ``__call__``. The log-prob of a
response token needs the LM head *after* the packed backbone forward, on gathered rows only, so both
must run inside one root ``forward``. These wrappers register the model's top-level children under
their own names (the parameter names stay Hugging Face's: ``model.layers.0...``, ``lm_head.weight``)
and keep an unregistered reference to the model to call its methods.

Shape legend: T = packed tokens, N = gathered rows (response tokens), D = hidden size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlkit.models.logprobs import token_logprobs
from rlkit.models.topk import token_logprobs_at, token_sum_pi_squared, token_topk_logprobs


class _AdoptChildren(nn.Module):
    """Registers ``inner``'s children and direct parameters as its own, without a name prefix."""

    inner: Any  # the wrapped model (``CausalLM``, ``HFCausalLM`` or ``ValueModel``), unregistered

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        for name, child in inner.named_children():
            self.add_module(name, child)
        for name, param in inner.named_parameters(recurse=False):
            self.register_parameter(name, param)
        # Stored outside nn.Module's registries so the parameters are not seen twice.
        self.__dict__["inner"] = inner

    def train(self, mode: bool = True) -> _AdoptChildren:
        super().train(mode)
        self.inner.train(mode)
        return self

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.inner.set_gradient_checkpointing(enabled)


class PackedPolicy(_AdoptChildren):
    """A causal LM whose forward returns the log-probs (and entropy) of gathered tokens only."""

    def forward(
        self,
        input_ids_T: torch.Tensor,
        position_ids_T: torch.Tensor,
        cu_seqlens: torch.Tensor,
        gather_idx_N: torch.Tensor,
        labels_N: torch.Tensor,
        temperature: float = 1.0,
        with_entropy: bool = False,
        chunk_tokens: int = 1024,
        support_NK: torch.Tensor | None = None,
        with_sum_pi_squared: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Log-probs of ``labels_N`` under the temperature-scaled policy at positions ``gather_idx_N``.

        With ``support_NK`` (token ids per position, e.g. a teacher's top-k) the log-probs of those
        ids are returned too, as a third output (distillation's GKD losses); with
        ``with_sum_pi_squared`` then ``sum_v pi(v)^2`` per position (no gradient; OTB's input).

        Shape:
            input_ids_T, position_ids_T: (T,); cu_seqlens: (num_seqs + 1,) int32;
            gather_idx_N, labels_N: (N,); support_NK: (N, K). Returns log-probs (N,) fp32, entropy
            (N,) fp32 or None, then with a support its log-probs (N, K) fp32, then ``sum_v pi(v)^2`` (N,).
        """
        hidden_TD = self.inner.forward_packed(input_ids_T, position_ids_T, cu_seqlens)
        hidden_ND = hidden_TD.index_select(0, gather_idx_N)
        # in the activations' dtype: a no-op under FSDP's mixed precision, the cast under autocast
        weight_VD = self.inner.lm_head.weight.to(hidden_TD.dtype)
        softcap = getattr(self.inner, "logit_softcap", None)  # Gemma-2's soft-capped logits
        logp_N, entropy_N = token_logprobs(
            hidden_ND,
            weight_VD,
            labels_N,
            temperature=temperature,
            chunk_tokens=chunk_tokens,
            with_entropy=with_entropy,
            softcap=softcap,
        )
        extras: list[torch.Tensor] = []
        scaling = {"temperature": temperature, "chunk_tokens": chunk_tokens, "softcap": softcap}
        if support_NK is not None:
            extras.append(token_logprobs_at(hidden_ND, weight_VD, support_NK, **scaling))
        if with_sum_pi_squared:
            extras.append(token_sum_pi_squared(hidden_ND, weight_VD, **scaling))
        return (logp_N, entropy_N, *extras)


class PackedTopK(_AdoptChildren):
    """A causal LM whose forward returns, at gathered positions, the label log-probs and the top-k."""

    def forward(
        self,
        input_ids_T: torch.Tensor,
        position_ids_T: torch.Tensor,
        cu_seqlens: torch.Tensor,
        gather_idx_N: torch.Tensor,
        labels_N: torch.Tensor,
        temperature: float = 1.0,
        topk: int = 32,
        chunk_tokens: int = 1024,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logp_N, topk_logp_NK, topk_ids_NK)`` (see :func:`rlkit.models.topk.token_topk_logprobs`).

        Shape:
            as :class:`PackedPolicy`; returns (N,) fp32, (N, K) fp32, (N, K) int64.
        """
        hidden_TD = self.inner.forward_packed(input_ids_T, position_ids_T, cu_seqlens)
        return token_topk_logprobs(
            hidden_TD.index_select(0, gather_idx_N),
            self.inner.lm_head.weight.to(hidden_TD.dtype),
            labels_N,
            topk,
            temperature=temperature,
            chunk_tokens=chunk_tokens,
            softcap=getattr(self.inner, "logit_softcap", None),
        )


class PackedValue(_AdoptChildren):
    """A value model whose forward returns the values at gathered positions only."""

    def forward(
        self,
        input_ids_T: torch.Tensor,
        position_ids_T: torch.Tensor,
        cu_seqlens: torch.Tensor,
        gather_idx_N: torch.Tensor,
    ) -> torch.Tensor:
        """Values (N,) fp32 read at packed positions ``gather_idx_N``.

        Shape:
            input_ids_T, position_ids_T: (T,); cu_seqlens: (num_seqs + 1,) int32; gather_idx_N: (N,).
        """
        values_T: torch.Tensor = self.inner.forward_packed(input_ids_T, position_ids_T, cu_seqlens)
        return values_T.index_select(0, gather_idx_N).float()
