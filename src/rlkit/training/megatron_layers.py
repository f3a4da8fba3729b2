"""rlkit's modules inside Megatron-core's ``GPTModel`` and the collectives around them.

The local layer spec (no transformer-engine, no apex) gets rlkit's norm (:func:`rms_norm`, usable
under sequence parallelism) and core attention (:func:`sdpa_attention`: PyTorch's SDPA, and
context parallelism over gathered keys and values). :func:`context_split` says which positions of
a padded row a context-parallel rank holds, :func:`gather_seq` gathers sequence shards with the
gradient each use needs, and :func:`vocab_parallel_logprobs` computes log-probs over the TP
ranks' vocabulary shards. :mod:`rlkit.training.megatron_model` builds and runs the model with them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@functools.cache
def rms_norm() -> type:
    """``torch.nn.RMSNorm`` built as Megatron builds its norms, and usable under sequence parallelism.

    The local spec's ``WrappedTorchNorm`` refuses ``sequence_parallel`` only because a norm of a
    sequence shard sees part of the tokens: its weight's gradient is a partial sum. This one tags
    its weight ``sequence_parallel`` (Megatron's own mark) so the engine sums that gradient over
    the TP group (:meth:`~rlkit.training.megatron_engine.MegatronEngine._reduce_grads`).
    """

    class RMSNorm(nn.RMSNorm):
        def __init__(self, config: Any, hidden_size: int, eps: float = 1e-5, **_: Any) -> None:
            super().__init__(hidden_size, eps=eps)
            if config.sequence_parallel:
                self.weight.sequence_parallel = True  # type: ignore[attr-defined]

    return RMSNorm


def cp_positions(width: int, cp: int, rank: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The positions (width / cp,) of a padded row that context-parallel rank ``rank`` holds.

    Megatron's load-balanced split for causal attention: the row is cut into 2 x CP chunks and
    rank r holds chunks r and 2 CP - 1 - r, so every rank has the same amount of attention work.
    """
    chunk = width // (2 * cp)
    within = torch.arange(chunk, device=device)
    return torch.cat([within + rank * chunk, within + (2 * cp - 1 - rank) * chunk])


@dataclass(frozen=True)
class ContextSplit:
    """Where one context-parallel rank's positions sit in a padded row (see :func:`context_split`).

    Shape: mine (width / CP,), order (width,), masked (1, 1, width / CP, width).
    """

    mine: torch.Tensor  # the row positions this rank holds
    order: torch.Tensor  # indices that put the CP ranks' gathered positions back in row order
    masked: torch.Tensor  # Megatron's attention-mask convention: True where a query must not see a key


def context_split(width: int, cp: int, rank: int, device: torch.device) -> ContextSplit:
    """The split of a padded row of ``width`` positions for CP rank ``rank`` of ``cp``: its
    positions, the order of the gathered ones, and the causal mask of its queries over the keys
    gathered from all CP ranks (in rank order). Built once per forward; every layer's attention
    reads the mask."""
    held = torch.cat([cp_positions(width, cp, r, device) for r in range(cp)])
    mine = cp_positions(width, cp, rank, device)
    return ContextSplit(mine, torch.argsort(held), (held[None, :] > mine[:, None])[None, None])


class _GatherSeq(torch.autograd.Function):
    """All-gather along dim 0 over ``group``; backward: each rank's slice of the gradient summed
    over the group (``sum_grads``: the ranks computed on the gathered tensor with different
    parts of the work) or its slice alone (the ranks computed the same thing after the gather)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any, sum_grads: bool) -> torch.Tensor:
        ctx.group, ctx.sum_grads = group, sum_grads
        out = tensor.new_empty((dist.get_world_size(group) * tensor.shape[0], *tensor.shape[1:]))
        dist.all_gather_into_tensor(out, tensor.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        size = dist.get_world_size(ctx.group)
        if not ctx.sum_grads:
            return grad.chunk(size)[dist.get_rank(ctx.group)].contiguous(), None, None
        out = grad.new_empty((grad.shape[0] // size, *grad.shape[1:]))
        dist.reduce_scatter_tensor(out, grad.contiguous(), group=ctx.group)
        return out, None, None


def gather_seq(tensor: torch.Tensor, group: Any, *, sum_grads: bool) -> torch.Tensor:
    """``tensor`` of every rank of ``group``, concatenated along dim 0 in rank order (see :class:`_GatherSeq`)."""
    out: torch.Tensor = _GatherSeq.apply(tensor, group, sum_grads)
    return out


@functools.cache
def sdpa_attention() -> type:
    """Megatron's core attention (the local spec's slot) computed by ``F.scaled_dot_product_attention``.

    The local spec's ``DotProductAttention`` multiplies out the (B, heads, S, S) scores, masks,
    softmaxes and multiplies again, one eager kernel each, and refuses context parallelism; SDPA
    runs flash attention on a GPU (and the math path on a CPU) with the same result. Without
    context parallelism it is causal and ignores ``attention_mask``: rlkit's forward only ever
    passes right-padded rows (see ``_MegatronRoot.hidden_states``), and dropout is off.

    With context parallelism each rank holds the queries, keys and values of its two chunks of
    every row (:func:`cp_positions`): the keys and values are gathered over the CP group (their
    gradients summed back in backward) and ``attention_mask`` is the forward's
    :attr:`ContextSplit.masked`, the causal mask of the local queries over the gathered keys.
    """
    from megatron.core import parallel_state as mpu
    from megatron.core.transformer.module import MegatronModule

    class SDPAttention(MegatronModule):  # type: ignore[misc]
        def __init__(
            self, config: Any, layer_number: int, softmax_scale: float | None = None, **_: Any
        ) -> None:
            super().__init__(config=config)
            tp = config.tensor_model_parallel_size
            self.heads_per_partition = config.num_attention_heads // tp
            self.groups_per_partition = max(1, config.num_query_groups // tp)
            self.hidden_size_per_partition = config.kv_channels * self.heads_per_partition
            self.softmax_scale = softmax_scale if softmax_scale is not None else config.kv_channels**-0.5
            self.cp = config.context_parallel_size

        def forward(
            self,
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            attention_mask: torch.Tensor | None,
            attn_mask_type: Any = None,
            attention_bias: Any = None,
            packed_seq_params: Any = None,
        ) -> torch.Tensor:
            if attention_bias is not None or packed_seq_params is not None:
                raise ValueError(
                    "rlkit's SDPA attention takes neither an attention bias nor packed sequences"
                )
            seq, rows = query.shape[0], query.shape[1]
            allowed: torch.Tensor | None = None
            if self.cp > 1:
                group = mpu.get_context_parallel_group()
                key, value = (gather_seq(t, group, sum_grads=True) for t in (key, value))
                if attention_mask is None or attention_mask.shape[-1] != key.shape[0]:
                    raise ValueError("context-parallel attention needs the forward's ContextSplit.masked")
                allowed = ~attention_mask
            # [S, B, heads, d] -> [B, heads, S, d]; GQA: each key/value group serves its run of query heads
            q_BHSd, k_BHSd, v_BHSd = (t.permute(1, 2, 0, 3) for t in (query, key, value))
            groups = self.heads_per_partition // self.groups_per_partition
            if groups > 1:
                k_BHSd = k_BHSd.repeat_interleave(groups, dim=1)
                v_BHSd = v_BHSd.repeat_interleave(groups, dim=1)
            out_BHSd = F.scaled_dot_product_attention(
                q_BHSd, k_BHSd, v_BHSd, attn_mask=allowed, is_causal=allowed is None, scale=self.softmax_scale
            )
            return out_BHSd.permute(2, 0, 1, 3).reshape(seq, rows, self.hidden_size_per_partition)

    return SDPAttention


def _chunk_vocab_parallel(
    h_CD: torch.Tensor, w_VD: torch.Tensor, labels_C: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies (C,) of one chunk over the TP group's vocabulary shards.

    The sums over the vocabulary are Megatron's TP reductions (all-reduce forward, identity
    backward: what follows them is the same on every TP rank, so each rank's gradient is whole).
    """
    from megatron.core import parallel_state as mpu
    from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region as tp_sum

    group = mpu.get_tensor_model_parallel_group()
    logits_CV = (h_CD @ w_VD.T).float() / temperature
    vocab = w_VD.shape[0]
    start = mpu.get_tensor_model_parallel_rank() * vocab
    with torch.no_grad():  # the max only shifts the exponent: no gradient through it
        max_C = logits_CV.max(dim=-1).values
        dist.all_reduce(max_C, op=dist.ReduceOp.MAX, group=group)
    shifted_CV = logits_CV - max_C[:, None]
    exp_CV = shifted_CV.exp()
    sum_C = tp_sum(exp_CV.sum(-1))
    local = labels_C - start
    owned = (local >= 0) & (local < vocab)
    picked_C = shifted_CV.gather(1, local.clamp(0, vocab - 1)[:, None]).squeeze(1) * owned
    picked_C = tp_sum(picked_C)
    lse_C = sum_C.log()
    logp_C = picked_C - lse_C
    if not with_entropy:
        return logp_C, logp_C.new_zeros(0)
    # H = lse - E_p[shifted logits]
    mean_C = tp_sum((exp_CV * shifted_CV).sum(-1)) / sum_C
    return logp_C, lse_C - mean_C


def vocab_parallel_logprobs(
    hidden_ND: torch.Tensor,
    weight_VD: torch.Tensor,
    labels_N: torch.Tensor,
    temperature: float,
    chunk_tokens: int,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) of ``labels_N`` with the LM head split over the TP ranks by vocabulary.

    Each rank holds (V / TP, D) of the head; per chunk of rows the softmax's max, normaliser and
    the label's logit are reduced over the TP group, so no rank ever holds full-vocabulary
    logits. Each chunk is recomputed in backward (activation checkpointing), so memory holds one
    chunk's (C, V / TP) logits at a time.
    """
    from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region
    from torch.utils.checkpoint import checkpoint

    # Each rank's vocabulary shard gives part of the hidden states' gradient: sum it over TP in backward.
    hidden_ND = copy_to_tensor_model_parallel_region(hidden_ND)
    logps, entropies = [], []
    for start in range(0, hidden_ND.shape[0], chunk_tokens):
        stop = start + chunk_tokens
        lp, ent = checkpoint(
            _chunk_vocab_parallel,
            hidden_ND[start:stop],
            weight_VD,
            labels_N[start:stop],
            temperature,
            with_entropy,
            use_reentrant=False,
        )
        logps.append(lp)
        entropies.append(ent)
    if not logps:
        empty = hidden_ND.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    return torch.cat(logps), (torch.cat(entropies) if with_entropy else None)
