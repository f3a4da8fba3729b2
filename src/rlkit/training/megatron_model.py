"""Megatron-core ``GPTModel`` from a Hugging Face folder, and the packed log-prob forward the roles call.

Only the modules of Megatron-core itself are used (``get_gpt_layer_local_spec()``: no
transformer-engine, no apex). The model is built from ``config.json`` (:func:`transformer_config`)
and its weights come from the Hugging Face checkpoint through rlkit's converter
(:mod:`rlkit.training.megatron_convert`), sharded for this rank's tensor- and expert-parallel
position.

:class:`MegatronPolicy` has the forward of :class:`rlkit.training.heads.PackedPolicy`, so the
actor's micro-batch loop runs unchanged on it. The local attention has no variable-length
kernel, so a packed micro-batch is laid out as right-padded rows (causal attention never looks
at the padding after a row) and the hidden states are gathered back into packed order before
the LM head; log-probs come from rlkit's chunked path (no full-vocabulary fp32 logits), or
with tensor parallelism from :func:`~rlkit.training.megatron_layers.vocab_parallel_logprobs`
over the vocabulary shards. rlkit's norm, attention and the CP / SP gathers are in
:mod:`rlkit.training.megatron_layers`.

Shape legend: T = packed tokens, N = gathered rows, D = hidden size, S = longest row, B = rows.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rlkit.config.rules import MEGATRON_INSTALL
from rlkit.errors import UserError
from rlkit.models.logprobs import token_logprobs
from rlkit.models.topk import token_logprobs_at, token_sum_pi_squared
from rlkit.training.megatron_convert import (
    MegatronLayout,
    hf_to_megatron,
    shard_ep,
    shard_pp,
    shard_tp,
    tp_split_dim,
)
from rlkit.training.megatron_layers import (
    context_split,
    gather_seq,
    rms_norm,
    sdpa_attention,
    vocab_parallel_logprobs,
)

#: the pip line the error for a missing megatron-core names
INSTALL_HINT = (
    'pip install "rlkit[megatron]" (megatron-core 0.19 needs Python >= 3.12; 0.16.1 is the last for 3.11)'
)


def megatron_available() -> bool:
    return importlib.util.find_spec("megatron.core") is not None


def require_megatron(key: str = "actor.strategy=megatron") -> None:
    """Raise one line naming the install when megatron-core is missing."""
    if not megatron_available():
        raise UserError(
            f"{key} needs megatron-core, which is not installed (Python {sys.version_info.major}.{sys.version_info.minor})",
            hint=MEGATRON_INSTALL,
        )


@dataclass(frozen=True)
class ParallelSizes:
    """Megatron's parallel sizes of one model replica; data parallel is what the world has left."""

    tensor: int = 1
    pipeline: int = 1
    virtual_pipeline: int = 1
    context: int = 1
    expert: int = 1
    sequence: bool = False  # Megatron's sequence parallelism over the TP group

    @property
    def seq_multiple(self) -> int:
        """What a padded row's width must divide into: 2 x CP chunks (the load-balanced causal
        split), each cut over the TP ranks under sequence parallelism."""
        return (2 * self.context if self.context > 1 else 1) * (self.tensor if self.sequence else 1)


def init_parallel_state(sizes: ParallelSizes) -> None:
    """Initialise Megatron's process groups over the default group (once per process).

    Raises:
        ValueError: Megatron is already initialised with other sizes in this process.
    """
    from megatron.core import parallel_state as mpu

    if mpu.model_parallel_is_initialized():
        have = (
            mpu.get_tensor_model_parallel_world_size(),
            mpu.get_pipeline_model_parallel_world_size(),
            mpu.get_context_parallel_world_size(),
        )
        if have != (sizes.tensor, sizes.pipeline, sizes.context):
            raise ValueError(
                f"Megatron is initialised with (TP, PP, CP) = {have}, not {(sizes.tensor, sizes.pipeline, sizes.context)}"
            )
        return
    mpu.initialize_model_parallel(
        tensor_model_parallel_size=sizes.tensor,
        pipeline_model_parallel_size=sizes.pipeline,
        virtual_pipeline_model_parallel_size=sizes.virtual_pipeline if sizes.virtual_pipeline > 1 else None,
        context_parallel_size=sizes.context,
        expert_model_parallel_size=sizes.expert,
        expert_tensor_parallel_size=1,
        create_gloo_process_groups=dist.get_backend() != "gloo",
    )


def transformer_config(
    hf: dict[str, Any],
    sizes: ParallelSizes,
    *,
    params_dtype: torch.dtype = torch.float32,
    recompute: bool = False,
) -> Any:
    """The ``TransformerConfig`` of a Llama / Qwen2 / Qwen3 / Qwen3-MoE ``config.json``.

    Dropout is off (RL log-probs must be deterministic); fusions that need transformer-engine or
    apex are off. ``recompute`` recomputes every layer's activations in backward (full, uniform,
    one layer at a time). MoE routing follows Qwen3-MoE: softmax over all experts, top-k, and
    renormalised weights when ``norm_topk_prob`` (Megatron's top-k-then-softmax is the same);
    there is no load-balancing loss (``moe_aux_loss_coeff=0``: the router trains through the
    policy loss only, and the update stays independent of how the batch is cut).
    """
    from megatron.core.transformer import TransformerConfig

    layout = MegatronLayout.from_hf(hf)
    rope = hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UserError(
            f"actor.strategy=megatron maps default RoPE only, not {rope.get('rope_type', rope.get('type'))!r}",
            hint="use actor.strategy=fsdp for this model",
        )
    kwargs: dict[str, Any] = {
        "num_layers": layout.num_layers,
        "hidden_size": layout.hidden_size,
        "num_attention_heads": layout.num_heads,
        "num_query_groups": layout.num_kv_heads,
        "kv_channels": layout.head_dim,
        "ffn_hidden_size": int(hf["intermediate_size"]),
        "normalization": "RMSNorm",
        "layernorm_epsilon": float(hf.get("rms_norm_eps", 1e-6)),
        "gated_linear_unit": True,
        "activation_func": F.silu,
        "add_bias_linear": False,
        "add_qkv_bias": bool(hf.get("attention_bias", layout.model_type == "qwen2")),
        "qk_layernorm": layout.model_type in ("qwen3", "qwen3_moe"),
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "bias_activation_fusion": False,
        "masked_softmax_fusion": False,
        "bias_dropout_fusion": False,
        "apply_rope_fusion": False,
        "persist_layer_norm": False,
        "gradient_accumulation_fusion": False,
        "params_dtype": params_dtype,
        "use_cpu_initialization": True,
        "perform_initialization": False,  # every weight comes from the checkpoint
        "tensor_model_parallel_size": sizes.tensor,
        "pipeline_model_parallel_size": sizes.pipeline,
        "context_parallel_size": sizes.context,
        "expert_model_parallel_size": sizes.expert,
        "expert_tensor_parallel_size": 1,
        "sequence_parallel": sizes.sequence,
    }
    kwargs.update(_pipeline_config(sizes))
    if recompute:
        kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    if layout.num_experts:
        kwargs.update(
            num_moe_experts=layout.num_experts,
            moe_ffn_hidden_size=int(hf["moe_intermediate_size"]),
            moe_router_topk=int(hf["num_experts_per_tok"]),
            moe_router_pre_softmax=not hf.get("norm_topk_prob", True),
            moe_router_load_balancing_type="none",
            moe_aux_loss_coeff=0.0,
            # allgather does not take the pipeline's variable sequence lengths
            moe_token_dispatcher_type="alltoall" if sizes.expert > 1 or sizes.pipeline > 1 else "allgather",
            moe_grouped_gemm=False,
        )
    return TransformerConfig(**kwargs)


def _pipeline_config(sizes: ParallelSizes) -> dict[str, Any]:
    """The ``TransformerConfig`` settings of the pipeline schedule (none without pipeline stages)."""
    if sizes.pipeline == 1:
        return {}
    out: dict[str, Any] = {
        "pipeline_dtype": torch.float32,  # the residual stream of fp32 weights under autocast
        # each micro-batch is (longest row, rows): stages swap shapes first; the interleaved
        # schedule's pre-posted receives need one fixed shape (the engine pads to it)
        "variable_seq_lengths": sizes.virtual_pipeline == 1,
        "calculate_per_token_loss": True,  # the schedule must not rescale rlkit's global-batch losses
        "moe_token_dispatcher_type": "alltoall",  # allgather refuses variable lengths (dense models too)
    }
    if sizes.virtual_pipeline > 1:
        out["virtual_pipeline_model_parallel_size"] = sizes.virtual_pipeline
    return out


def build_gpt(
    hf: dict[str, Any],
    config: Any,
    *,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: int | None = None,
) -> Any:
    """A ``GPTModel`` (this rank's pipeline stage, or its model chunk ``vp_stage``: the embedding
    with ``pre_process``, the final norm and LM head with ``post_process``) with Megatron-core's
    local layer spec, rlkit's attention (:func:`sdpa_attention`) and norms (:func:`rms_norm`)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_block import (
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    layout = MegatronLayout.from_hf(hf)
    spec = get_gpt_layer_local_spec(
        num_experts=layout.num_experts or None,
        moe_grouped_gemm=False,
        qk_layernorm=config.qk_layernorm,
        normalization="RMSNorm",
    )
    layer = spec.submodules
    layer.self_attention.submodules.core_attention = sdpa_attention()
    layer.input_layernorm = layer.pre_mlp_layernorm = rms_norm()
    if config.qk_layernorm:
        layer.self_attention.submodules.q_layernorm = rms_norm()
        layer.self_attention.submodules.k_layernorm = rms_norm()
    block = TransformerBlockSubmodules(
        layer_specs=[spec] * get_num_layers_to_build(config, vp_stage=vp_stage), layer_norm=rms_norm()
    )
    theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=block,
        vocab_size=layout.vocab_size,
        max_sequence_length=int(hf.get("max_position_embeddings", 4096)),
        pre_process=pre_process,
        post_process=post_process,
        **({} if vp_stage is None else {"vp_stage": vp_stage}),
        share_embeddings_and_output_weights=layout.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=float(theta),
        parallel_output=True,
    )
    _mark_tensor_parallel(gpt)
    return gpt


def _mark_tensor_parallel(gpt: nn.Module) -> None:
    """Tag the TP-split weights as Megatron's initialisers do.

    Megatron sets ``tensor_model_parallel`` (which its norm, clipping and optimizer read to count
    a shard once) only while it initialises a weight; weights that come from a checkpoint
    (``perform_initialization=False``) would otherwise look replicated.
    """
    from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

    for name, param in gpt.named_parameters():
        dim = tp_split_dim(name)
        if dim is not None and not hasattr(param, "tensor_model_parallel"):  # biases come tagged
            set_tensor_model_parallel_attributes(param, is_parallel=True, dim=dim, stride=1)


def megatron_shard(
    hf_sd: dict[str, torch.Tensor], layout: MegatronLayout, sizes: ParallelSizes
) -> list[dict[str, torch.Tensor]]:
    """This rank's part of a Hugging Face state dict, in Megatron names and layouts: one state
    dict per model chunk (one without virtual pipeline stages), layers numbered within it."""
    from megatron.core import parallel_state as mpu

    mg = shard_tp(hf_to_megatron(hf_sd, layout), sizes.tensor, mpu.get_tensor_model_parallel_rank())
    chunks = [mg]
    if sizes.pipeline > 1:
        pp_rank = mpu.get_pipeline_model_parallel_rank()
        chunks = shard_pp(mg, layout, sizes.pipeline, sizes.virtual_pipeline, pp_rank)
    if layout.num_experts:
        ep_rank = mpu.get_expert_model_parallel_rank()
        chunks = [shard_ep(c, layout.num_experts, sizes.expert, ep_rank) for c in chunks]
    return chunks


def load_into(gpt: nn.Module, shard: dict[str, torch.Tensor]) -> None:
    """Copy a converted shard into the model; every parameter must be covered, none left over.

    Megatron's ``_extra_state`` entries (transformer-engine bookkeeping) are not weights and are
    not checked.
    """
    own = {k for k in gpt.state_dict() if not k.endswith("_extra_state")}
    missing, extra = own - set(shard), set(shard) - own
    if missing or extra:
        raise ValueError(
            f"converted weights do not fit the GPTModel: missing {sorted(missing)[:4]}, extra {sorted(extra)[:4]}"
        )
    params = dict(gpt.named_parameters())
    with torch.no_grad():
        for name, tensor in shard.items():
            params[name].copy_(tensor)


# ---------------------------------------------------------------- forward


def padded_shape(cu_seqlens: torch.Tensor, multiple: int = 1) -> tuple[int, int]:
    """(rows, row width) of a packed micro-batch's right-padded layout (one host read): the
    longest row, rounded up to a multiple of ``multiple`` (:attr:`ParallelSizes.seq_multiple`)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    longest = int(lengths.max().item())
    return int(lengths.numel()), -(-longest // multiple) * multiple


def _padded_layout(
    cu_seqlens: torch.Tensor,
    position_ids_T: torch.Tensor,
    shape: tuple[int, int] | None = None,
    multiple: int = 1,
) -> tuple[int, int, torch.Tensor]:
    """Rows, row width and each packed token's index into the flattened (B, S) right-padded layout.

    The layout is :func:`padded_shape`, or ``shape`` when given (more rows and a wider row than
    the micro-batch needs: a pipeline schedule with fixed tensor shapes). Megatron's RoPE numbers
    each row's tokens from 0, so the packed positions must do the same.

    Raises:
        ValueError: A sequence's position ids are not 0, 1, 2, ...
    """
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    rows, width = shape if shape is not None else padded_shape(cu_seqlens, multiple)
    row_T = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    col_T = torch.arange(position_ids_T.numel(), device=lengths.device) - cu_seqlens[:-1].long()[row_T]
    if not torch.equal(col_T, position_ids_T.long()):
        raise ValueError("actor.strategy=megatron needs position ids 0, 1, 2, ... within each sequence")
    return rows, width, row_T * width + col_T


def _under_autocast(forward: Any, dtype: torch.dtype) -> Any:
    """``forward`` run under autocast in ``dtype`` on the device of its ``hidden_states``.

    Megatron's activation recompute re-runs each layer's forward in backward without restoring
    the autocast state of the first forward (``torch.utils.checkpoint`` restores it; Megatron's
    ``CheckpointFunction`` does not): without this, every recomputed layer and its backward ran in
    fp32, about 3x slower on a GPU. Under the outer autocast of the first forward it changes nothing.
    """

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        hidden: torch.Tensor = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        with torch.autocast(hidden.device.type, dtype=dtype):
            return forward(*args, **kwargs)

    return run


class _MegatronRoot(nn.Module):
    """This rank's ``GPTModel`` and the packed forward up to its final norm (the heads are the subclasses').

    With virtual pipeline stages a rank holds several model chunks (``stages``, one ``GPTModel``
    each); the forward runs the ``active`` one, which the engine's schedule sets before each call,
    and lays every micro-batch out in the same ``pad_to`` shape (the interleaved schedule sends
    fixed shapes between stages).
    """

    def __init__(self, gpt: nn.Module | list[nn.Module], compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.stages = nn.ModuleList(gpt if isinstance(gpt, list) else [gpt])
        self.active = 0
        self.pad_to: tuple[int, int] | None = None  # (rows, width) of every micro-batch, when set
        self.compute_dtype = compute_dtype
        # fp32 master weights computing in a lower dtype run under autocast (as FSDP's one-rank path)
        self.autocast = any(p.dtype != compute_dtype for p in self.parameters() if p.is_floating_point())
        if self.autocast:
            for layer in self.decoder_layers():
                layer.forward = _under_autocast(layer.forward, compute_dtype)

    def decoder_layers(self) -> list[Any]:
        """Every ``TransformerLayer`` of this rank's model chunks, in order."""
        stages: list[Any] = list(self.stages)
        return [layer for stage in stages for layer in stage.decoder.layers]

    @property
    def gpt(self) -> Any:
        """The active model chunk (a ``megatron.core.models.gpt.GPTModel``; the only one without virtual stages)."""
        return self.stages[self.active]

    @property
    def seq_multiple(self) -> int:
        """What every padded row's width must divide into (:attr:`ParallelSizes.seq_multiple`)."""
        config = self.stages[0].config
        return ParallelSizes(
            tensor=config.tensor_model_parallel_size,
            context=config.context_parallel_size,
            sequence=config.sequence_parallel,
        ).seq_multiple

    def hidden_states(
        self, input_ids_T: torch.Tensor, position_ids_T: torch.Tensor, cu_seqlens: torch.Tensor
    ) -> torch.Tensor:
        """Final-norm hidden states (T, D) of a packed micro-batch (every token, all TP and CP ranks alike).

        On a pipeline stage before the last, the stage's output instead: (S, B, D) fp32 in the
        padded layout (this rank's part of it under CP and SP), what the schedule sends to the
        next stage (a stage after the first starts from the tensor the schedule received and set
        on its ``GPTModel``).

        With context parallelism this rank runs its two chunks of every row
        (:func:`~rlkit.training.megatron_layers.context_split`); under sequence parallelism Megatron's embedding cuts that over the
        TP ranks. The last stage gathers the rows back whole: over TP with each rank's slice of the
        gradient (every TP rank computes the same heads on them), over CP with the gradients
        summed (the engine averages the weights' gradients over the CP ranks, as Megatron does).
        """
        from megatron.core import parallel_state as mpu

        rows, width, index_T = _padded_layout(cu_seqlens, position_ids_T, self.pad_to, self.seq_multiple)
        ids_BS = input_ids_T.new_zeros(rows * width)
        ids_BS[index_T] = input_ids_T
        ids_BS = ids_BS.view(rows, width)
        gpt, config = self.gpt, self.gpt.config
        cp = config.context_parallel_size
        split = None
        if cp > 1:
            split = context_split(width, cp, mpu.get_context_parallel_rank(), ids_BS.device)
            ids_BS = ids_BS.index_select(1, split.mine)
            rotary = gpt.rotary_pos_emb.get_emb(width).index_select(0, split.mine)
            mask = split.masked  # every layer's attention reads it (rlkit's CP attention)
        else:
            rotary = gpt.rotary_pos_emb(width)
            # Megatron's default causal mask is built on "cuda"; rlkit's attention does not read this one
            mask = torch.ones(width, width, dtype=torch.bool, device=ids_BS.device).triu(1)[None, None]
        local = ids_BS.shape[1]
        positions_BS = torch.arange(local, device=ids_BS.device).expand(rows, local)  # unused by RoPE models
        hidden_SBD = gpt.embedding(input_ids=ids_BS, position_ids=positions_BS) if gpt.pre_process else None
        hidden_SBD = gpt.decoder(hidden_states=hidden_SBD, attention_mask=mask, rotary_pos_emb=rotary)
        if not gpt.post_process:
            stage_out: torch.Tensor = hidden_SBD.float()
            return stage_out
        if config.sequence_parallel:
            hidden_SBD = gather_seq(hidden_SBD, mpu.get_tensor_model_parallel_group(), sum_grads=False)
        if split is not None:
            hidden_SBD = gather_seq(hidden_SBD, mpu.get_context_parallel_group(), sum_grads=True)
            hidden_SBD = hidden_SBD.index_select(0, split.order)
        hidden_TD: torch.Tensor = (
            hidden_SBD.transpose(0, 1).reshape(rows * width, -1).index_select(0, index_T)
        )
        return hidden_TD


class MegatronPolicy(_MegatronRoot):
    """A ``GPTModel`` whose forward returns log-probs of gathered tokens (``PackedPolicy``'s forward)."""

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
        """As :meth:`rlkit.training.heads.PackedPolicy.forward`; with TP > 1 the head is vocab-parallel.

        Shape:
            input_ids_T, position_ids_T: (T,); cu_seqlens: (num_seqs + 1,); gather_idx_N, labels_N:
            (N,). Returns log-probs (N,) fp32, entropy (N,) fp32 or None, then the extras; on a
            pipeline stage before the last, the stage's output (S, B, D) alone.
        """
        with torch.autocast(input_ids_T.device.type, dtype=self.compute_dtype, enabled=self.autocast):
            hidden = self.hidden_states(input_ids_T, position_ids_T, cu_seqlens)
        if not self.gpt.post_process:
            return hidden  # type: ignore[return-value]  # a stage before the last: its output, for the next stage
        hidden_ND = hidden.index_select(0, gather_idx_N)
        weight_VD = (
            self.gpt.shared_embedding_or_output_weight()
            if self.gpt.share_embeddings_and_output_weights
            else self.gpt.output_layer.weight
        )
        weight_VD = weight_VD.to(self.compute_dtype)
        hidden_ND = hidden_ND.to(self.compute_dtype)
        if self.gpt.config.tensor_model_parallel_size > 1:
            if support_NK is not None or with_sum_pi_squared:
                raise ValueError(
                    "top-k distillation terms are not built for actor.megatron.tensor_parallel > 1"
                )
            return vocab_parallel_logprobs(  # type: ignore[return-value]
                hidden_ND, weight_VD, labels_N, temperature, chunk_tokens, with_entropy
            )
        logp_N, entropy_N = token_logprobs(
            hidden_ND,
            weight_VD,
            labels_N,
            temperature=temperature,
            chunk_tokens=chunk_tokens,
            with_entropy=with_entropy,
        )
        extras: list[torch.Tensor] = []
        if support_NK is not None:
            extras.append(
                token_logprobs_at(
                    hidden_ND, weight_VD, support_NK, temperature=temperature, chunk_tokens=chunk_tokens
                )
            )
        if with_sum_pi_squared:
            extras.append(
                token_sum_pi_squared(hidden_ND, weight_VD, temperature=temperature, chunk_tokens=chunk_tokens)
            )
        return (logp_N, entropy_N, *extras)  # type: ignore[arg-type]  # entropy is None unless asked


class MegatronValue(_MegatronRoot):
    """A ``GPTModel`` backbone (its LM head removed) with the critic's ``score`` head (``PackedValue``'s forward).

    ``score`` is a plain ``nn.Linear(hidden, 1)`` that every TP rank holds whole, under the Hugging
    Face name a value-model folder uses (``score.weight`` / ``score.bias``).
    """

    def __init__(
        self,
        gpt: nn.Module | list[nn.Module],
        score: nn.Linear | None,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(gpt, compute_dtype)
        self.score = score  # on the rank of the last pipeline stage only (in its last model chunk)

    def forward(
        self,
        input_ids_T: torch.Tensor,
        position_ids_T: torch.Tensor,
        cu_seqlens: torch.Tensor,
        gather_idx_N: torch.Tensor,
    ) -> torch.Tensor:
        """Values (N,) fp32 at packed positions ``gather_idx_N`` (as :class:`rlkit.training.heads.PackedValue`)."""
        with torch.autocast(input_ids_T.device.type, dtype=self.compute_dtype, enabled=self.autocast):
            hidden = self.hidden_states(input_ids_T, position_ids_T, cu_seqlens)
            if not self.gpt.post_process or self.score is None:
                return hidden  # a stage before the last: its output, for the next stage
            values_N: torch.Tensor = self.score(hidden.index_select(0, gather_idx_N)).squeeze(-1).float()
        return values_N
