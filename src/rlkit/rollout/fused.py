"""Fused projection weights for the decode step: one GEMM for q/k/v and one for gate/up per layer.

A decode step at small batch costs about one kernel launch per operation, so fewer, larger kernels
make it faster. The engine re-lays out each layer's ``q_proj``/``k_proj``/``v_proj`` (weights and
biases) and ``gate_proj``/``up_proj`` weights as row blocks of one contiguous buffer and makes the
model's parameters views into it: parameter names, shapes and values are unchanged (the model's own
forward and ``state_dict`` work as before, and ``update_weights`` copying into a parameter updates
the buffer), but the decode step can run one GEMM over the whole buffer. No weight is duplicated.

Moving or casting the model afterwards (``model.to``) gives parameters new storage; ``fuse_layers``
notices that the views no longer alias the buffers and fuses again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from rlkit.models.decoder import CausalLM, DecoderLayer


@dataclass
class FusedLayer:
    """The fused buffers of one decoder layer.

    Shape:
        qkv_weight: ((H + 2K) * Dh, D); qkv_bias: ((H + 2K) * Dh,) or None;
        gate_up_weight: (2 * I, D), gate rows first.
    """

    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor | None
    gate_up_weight: torch.Tensor


def _aliases(buffer: torch.Tensor | None, params: list[nn.Parameter]) -> bool:
    """Whether ``params`` are consecutive row blocks of ``buffer``."""
    if buffer is None:
        return False
    offset = buffer.data_ptr()
    for p in params:
        if p.data_ptr() != offset or not p.is_contiguous():
            return False
        offset += p.numel() * p.element_size()
    return offset == buffer.data_ptr() + buffer.numel() * buffer.element_size()


def _fuse(modules: list[nn.Linear], attr: str, cache_name: str, owner: nn.Module) -> torch.Tensor | None:
    """Re-point ``module.<attr>`` of each module to row blocks of one buffer (kept on ``owner``)."""
    params = [getattr(m, attr) for m in modules]
    if any(p is None for p in params):
        return None
    cached = owner.__dict__.get(cache_name)
    if _aliases(cached, params):
        return cached
    with torch.no_grad():
        buffer = torch.cat([p.detach() for p in params], dim=0)
    start = 0
    for module, p in zip(modules, params, strict=True):
        rows = p.shape[0]
        setattr(module, attr, nn.Parameter(buffer[start : start + rows], requires_grad=p.requires_grad))
        start += rows
    owner.__dict__[cache_name] = buffer  # a plain attribute: not a parameter, not in the state dict
    return buffer


def fuse_layers(model: CausalLM) -> list[FusedLayer]:
    """Fuse every layer's projections in place (idempotent) and return the fused buffers."""
    fused = []
    for layer in cast(list[DecoderLayer], list(model.model.layers)):
        attn, mlp = layer.self_attn, layer.mlp
        qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        qkv_weight = _fuse(qkv, "weight", "_rlkit_qkv_weight", attn)
        qkv_bias = _fuse(qkv, "bias", "_rlkit_qkv_bias", attn)
        gate_up = _fuse([mlp.gate_proj, mlp.up_proj], "weight", "_rlkit_gate_up_weight", mlp)
        assert qkv_weight is not None and gate_up is not None
        fused.append(FusedLayer(qkv_weight, qkv_bias, gate_up))
    return fused
