"""Megatron-core training engine: ``actor.strategy=megatron`` behind the same role interface as FSDP2.

:class:`MegatronEngine` builds a ``GPTModel`` from the Hugging Face-named weights the role loaded
(see :mod:`rlkit.training.megatron_model`), keeps fp32 master parameters on the device and runs
forwards under ``torch.autocast`` in the compute dtype, as the FSDP engine does on one rank. The
roles' micro-batch loops, losses (:mod:`rlkit.algos`) and global-batch loss scaling are shared
with FSDP unchanged: the engine only changes where the shards live.

Parallelism: tensor parallelism (TP, optionally with Megatron's sequence parallelism, SP) and
expert parallelism (EP) come from Megatron's layers; pipeline parallelism (PP, with virtual
stages) from its 1F1B schedule, which runs the roles' micro-batches
(:meth:`MegatronEngine.run_micro_batches`); context parallelism (CP) from rlkit's forward, which
gives each CP rank two chunks of every padded row and gathers keys and values over the CP group
in attention (:func:`~rlkit.training.megatron_layers.sdpa_attention`). The data-parallel (DP)
ranks are the world over TP x PP x CP (experts: over EP). Each optimizer step first sums the
gradients a replica's ranks each hold part of (a tied embedding's two copies on the first and
last stage; under TP the q / k norms, and with SP every norm), averages gradients over the DP x
CP ranks (dense weights; experts over Megatron's expert-data-parallel group: the same averaging
FSDP's reduce-scatter does, so the losses' ``dp_size`` scaling holds), then measures the global
norm (TP-split weights once per shard, replicated ones and the embedding copy once), clips and
steps AdamW (:class:`~rlkit.training.engine_base.OptimizedEngine`). CP and SP are built for dense
models.

Checkpoints go through rlkit's layer (DCP): each tensor is saved under a name that is unique per
shard (``...weight@tp1of2`` for a TP-split weight, the global layer number on every pipeline
stage, the global expert number for an expert), so replicas write it once and a resume with the
same parallel sizes is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rlkit.data.batch import Batch
from rlkit.training.distributed import ensure_process_group, training_device
from rlkit.training.engine import resolve_dtype
from rlkit.training.engine_base import Consume, Forward, OptimizedEngine, T
from rlkit.training.megatron_convert import (
    MegatronLayout,
    gather_tensor_tp,
    global_expert_name,
    megatron_tensor_to_hf,
    shard_key,
    stage_layers,
    tp_split_dim,
)
from rlkit.training.megatron_groups import (
    all_gather,
    all_reduce_coalesced,
    broadcast_coalesced,
    chunk_ends,
    dp_groups,
    is_expert,
    last_stage_group,
    share_out,
    tp_partial,
)
from rlkit.training.megatron_model import (
    MegatronPolicy,
    MegatronValue,
    ParallelSizes,
    build_gpt,
    init_parallel_state,
    load_into,
    megatron_shard,
    padded_shape,
    require_megatron,
    transformer_config,
)
from rlkit.training.micro_batches import PackedMicroBatch
from rlkit.training.stats import MiniBatchStats


class MegatronEngine(OptimizedEngine):
    """A Megatron-core ``GPTModel`` (TP / PP / CP / EP shards) with AdamW, the schedule and clipping.

    Args:
        hf_config: the model's Hugging Face ``config.json`` dict.
        hf_state_dict: its weights under Hugging Face names (fp32, on the CPU); converted and sharded here.
        head: ``policy`` (the LM head: :class:`~rlkit.training.megatron_model.MegatronPolicy`) or
            ``value`` (the critic's ``score`` head: :class:`~rlkit.training.megatron_model.MegatronValue`).
        tensor_parallel, pipeline_parallel, virtual_pipeline, expert_parallel: Megatron's sizes
            (the rest of the world is data parallel; virtual stages need pipeline_parallel > 1).
        context_parallel: sequences split over this many ranks (dense models).
        sequence_parallel: Megatron's sequence parallelism over the TP ranks (needs
            ``tensor_parallel > 1``; dense models).
        seed: seeds Megatron's model-parallel RNG tracker on CUDA.
        dtype, optimizer_offload, gradient_checkpointing, lr, weight_decay, betas, warmup_steps,
            total_steps, lr_schedule, min_lr_ratio, grad_clip: as :class:`~rlkit.training.engine.FSDPEngine`
            (``gradient_checkpointing`` is Megatron's full, uniform activation recompute).
        torch_compile: compile each decoder layer's ``forward`` with ``torch.compile``, as the FSDP
            engine does (on one H200 it took the 0.5B update from 0.225 s to 0.163 s).
        param_offload: FSDP-only; accepted so the roles pass one set of keywords, unused.
        distributed_optimizer: shard the AdamW states over the data-parallel replicas (ZeRO-1):
            each replica steps its share of the weights and broadcasts them after the step.
    """

    module: MegatronPolicy | MegatronValue

    def __init__(
        self,
        hf_config: dict[str, Any],
        hf_state_dict: dict[str, torch.Tensor],
        *,
        head: str = "policy",
        tensor_parallel: int = 1,
        pipeline_parallel: int = 1,
        virtual_pipeline: int = 1,
        context_parallel: int = 1,
        expert_parallel: int = 1,
        sequence_parallel: bool = False,
        seed: int = 0,
        dtype: str | torch.dtype | None = "auto",
        param_offload: bool = False,
        optimizer_offload: bool = False,
        gradient_checkpointing: bool = False,
        lr: float,
        weight_decay: float = 0.01,
        betas: tuple[float, float] | list[float] = (0.9, 0.999),
        warmup_steps: int = 0,
        total_steps: int,
        lr_schedule: str = "constant",
        min_lr_ratio: float = 0.0,
        grad_clip: float = 1.0,
        torch_compile: bool = False,
        distributed_optimizer: bool = False,
    ) -> None:
        del param_offload  # FSDP's knob
        require_megatron()
        self.sizes = ParallelSizes(
            tensor=tensor_parallel,
            pipeline=pipeline_parallel,
            virtual_pipeline=virtual_pipeline,
            context=context_parallel,
            expert=expert_parallel,
            sequence=sequence_parallel,
        )
        _check_sizes(self.sizes, hf_config)
        ensure_process_group()
        self.device = training_device()
        self.compute_dtype = resolve_dtype(dtype)
        init_parallel_state(self.sizes)
        self._last_stage_group = last_stage_group() if pipeline_parallel > 1 else None
        self._stage_meta: dict[tuple[int, Any], list[Any]] = {}  # see named_full_tensors
        # the LM head of a tied policy on the last stage is a copy of the first stage's embedding
        self._tied_across_stages = (
            head == "policy" and pipeline_parallel > 1 and bool(hf_config.get("tie_word_embeddings"))
        )
        if self.device.type == "cuda":
            from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

            model_parallel_cuda_manual_seed(seed)
        self.hf_config = dict(hf_config)
        self.layout = MegatronLayout.from_hf(hf_config)
        config = transformer_config(hf_config, self.sizes, recompute=gradient_checkpointing)
        self.module = self._build_root(hf_config, hf_state_dict, config, head).to(self.device)
        if torch_compile:
            for layer in self.module.decoder_layers():
                layer.forward = torch.compile(layer.forward)
        self.optimizer_offload = optimizer_offload and self.device.type != "cpu"
        trained = [p for p in self.module.parameters() if p.requires_grad]
        self._tp_partial = tp_partial(self.module) if tensor_parallel > 1 else []  # see _reduce_grads
        # distributed optimizer: (experts?, owner replica) -> the weights that replica steps
        self._shares = share_out(trained) if distributed_optimizer else {}
        me = {expert: dist.get_rank(group) for expert, group in dp_groups().items()}
        others = {id(p) for (expert, owner), ps in self._shares.items() if owner != me[expert] for p in ps}
        self._setup_optimizer(
            trained,
            stepped=[p for p in trained if id(p) not in others],
            lr=lr,
            weight_decay=weight_decay,
            betas=betas,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            lr_schedule=lr_schedule,
            min_lr_ratio=min_lr_ratio,
            grad_clip=grad_clip,
        )

    def _build_root(
        self, hf: dict[str, Any], hf_sd: dict[str, torch.Tensor], config: Any, head: str
    ) -> nn.Module:
        """This rank's GPTModel chunks with its converted shards loaded, under the policy's or the value head."""
        if head not in ("policy", "value"):
            raise ValueError(f"unknown head {head!r}; valid: policy, value")
        chunks, score = [], None
        for vp, shard in enumerate(megatron_shard(hf_sd, self.layout, self.sizes)):
            first, last = chunk_ends(vp, self.sizes.virtual_pipeline)
            gpt = build_gpt(
                hf,
                config,
                pre_process=first,
                post_process=last,
                vp_stage=vp if self.sizes.pipeline > 1 else None,
            )
            if head == "value" and last:
                del gpt.output_layer  # the critic reads hidden states into its own head
                score = nn.Linear(self.layout.hidden_size, 1)
                score.load_state_dict(
                    {k.removeprefix("score."): shard.pop(k) for k in list(shard) if k.startswith("score.")}
                )
            if head == "value":
                shard.pop("output_layer.weight", None)  # a tied last stage's embedding copy: no LM head here
            load_into(gpt, shard)
            chunks.append(gpt)
        if head == "policy":
            return MegatronPolicy(chunks, self.compute_dtype)
        return MegatronValue(chunks, score, self.compute_dtype)

    def _named_params(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters under their Megatron names (the GPTModel's, layers numbered over the whole
        model) and the value head's HF names."""
        for name, param in self.module.named_parameters():
            stage, _, rest = name.removeprefix("stages.").partition(".")
            if not stage.isdigit():  # the value head
                yield name, param
                continue
            yield _global_layer(rest, self._layer_offset(int(stage))), param

    def _layer_offset(self, chunk: int) -> int:
        """The global number of the first layer of this rank's model chunk ``chunk``."""
        from megatron.core import parallel_state as mpu

        pp, vpp = self.sizes.pipeline, self.sizes.virtual_pipeline
        return stage_layers(
            self.layout.num_layers, pp, vpp, mpu.get_pipeline_model_parallel_rank(), chunk
        ).start

    # ------------------------------------------------------------------ the pipeline schedule

    def run_micro_batches(
        self, micro_batches: list[PackedMicroBatch], forward: Forward, consume: Consume, *, backward: bool
    ) -> None:
        """The plain loop without pipeline stages; with them, Megatron's 1F1B schedule (interleaved
        over the model chunks with virtual stages).

        Every stage runs ``forward`` (a stage before the last returns its output, which the
        schedule sends on); the last stage hands the heads' outputs to ``consume`` and the
        schedule runs the backward of the loss it returns back through the stages. The losses
        carry rlkit's global-batch scaling, so the schedule must not rescale them
        (``calculate_per_token_loss``, see :func:`~rlkit.training.megatron_model.transformer_config`).
        """
        if self.sizes.pipeline == 1:
            super().run_micro_batches(micro_batches, forward, consume, backward=backward)
            return
        from megatron.core.pipeline_parallel import get_forward_backward_func

        no_tokens = torch.zeros((), dtype=torch.int, device=self.device)
        chunks = list(self.module.stages)

        def step(data: Iterator[PackedMicroBatch], chunk: nn.Module) -> tuple[Any, Any]:
            self.module.active = next(i for i, c in enumerate(chunks) if c is chunk)
            mb = next(data)

            def loss_of(out: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
                loss = consume(mb, out)
                return (torch.zeros((), device=self.device) if loss is None else loss), no_tokens, {}

            return forward(mb), loss_of

        rows = width = 0  # shapes are exchanged per micro-batch (variable_seq_lengths) ...
        if self.sizes.virtual_pipeline > 1:  # ... but the interleaved schedule sends fixed ones
            shapes = [padded_shape(mb.cu_seqlens, self.sizes.seq_multiple) for mb in micro_batches]
            rows, width = max(r for r, _ in shapes), max(w for _, w in shapes)
            self.module.pad_to = (rows, width)
        try:
            get_forward_backward_func()(
                forward_step_func=step,
                data_iterator=[iter(micro_batches) for _ in chunks],
                model=chunks,
                num_microbatches=len(micro_batches),
                seq_length=width,
                micro_batch_size=rows,
                forward_only=not backward,
            )
        finally:
            self.module.active, self.module.pad_to = 0, None

    @property
    def min_micro_batches(self) -> int:
        """Micro-batches a pass must have: the interleaved schedule runs them in groups of one per stage."""
        return self.sizes.pipeline if self.sizes.virtual_pipeline > 1 else 1

    def reduce_stats(self, stats: MiniBatchStats) -> dict[str, float]:
        """The last stages' metrics (only they ``consume``) over their ranks, then on every rank."""
        if self._last_stage_group is None:
            return stats.reduce()
        from megatron.core import parallel_state as mpu

        reduced = stats.reduce(group=self._last_stage_group) if mpu.is_pipeline_last_stage() else {}
        return self.from_last_stage(reduced)

    def from_last_stage(self, value: T) -> T:
        """``value`` as the last pipeline stage of this rank's pipeline computed it (CPU tensors, floats)."""
        if self.sizes.pipeline == 1:
            return value
        from megatron.core import parallel_state as mpu

        group = mpu.get_pipeline_model_parallel_group()
        box = [value]
        dist.broadcast_object_list(box, src=mpu.get_pipeline_model_parallel_last_rank(), group=group)
        return box[0]

    # ------------------------------------------------------------------ gradients

    def _reduce_grads(self) -> None:
        """Sum the partial gradients of a model replica's ranks, then average over the data-parallel
        replicas (dense and expert weights apart).

        Partial within a replica: a tied embedding's two copies (first and last stage); under TP the
        q / k norms (each rank normalises its own heads with the shared weight) and, with sequence
        parallelism, every norm (each rank sees its shard of the sequence). The dense average runs
        over the data-parallel x context-parallel ranks: each CP rank's gradient is its chunks'
        part of CP times the loss (see :meth:`MegatronPolicy.hidden_states`).
        """
        from megatron.core import parallel_state as mpu

        if self._tied_across_stages and mpu.is_rank_in_embedding_group():
            # the first stage's embedding and the last stage's copy of it as the LM head: one weight
            for p in self.params:
                if getattr(p, "shared_embedding", False) and p.grad is not None:
                    dist.all_reduce(p.grad, group=mpu.get_embedding_group())
        partial = [p.grad for p in self._tp_partial if p.grad is not None]
        all_reduce_coalesced(partial, mpu.get_tensor_model_parallel_group())
        for expert, group in dp_groups().items():
            grads = [p.grad for p in self.params if p.grad is not None and is_expert(p) == expert]
            all_reduce_coalesced(grads, group, average=True)

    def _after_step(self) -> None:
        """Under the distributed optimizer, each parameter from the replica that stepped it, to the others."""
        groups = dp_groups()
        for (expert, owner), params in self._shares.items():
            broadcast_coalesced([p.data for p in params], owner, groups[expert])

    def grad_norm(self) -> float:
        """The L2 norm of all gradients of the model (every rank gets the same value).

        A TP-split weight counts each shard once, a weight every TP rank holds counts once; dense
        squares add over the model-parallel group, expert squares over the experts' group.
        """
        from megatron.core import parallel_state as mpu
        from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

        total = torch.zeros((), dtype=torch.float32, device=self.device)
        groups = {
            False: mpu.get_model_parallel_group(),
            True: mpu.get_expert_tensor_model_pipeline_parallel_group(),
        }
        for expert, group in groups.items():
            grads = [
                p.grad.float()
                for p in self.params
                if p.grad is not None
                and is_expert(p) == expert
                and (expert or param_is_not_tensor_parallel_duplicate(p))
                and not getattr(p, "shared", False)  # a last stage's copy of the tied embedding
            ]
            sq = torch.zeros((), dtype=torch.float32, device=self.device)
            if grads:
                sq = torch.stack(torch._foreach_norm(grads, 2.0)).pow(2).sum()
            if dist.get_world_size(group) > 1:
                dist.all_reduce(sq, group=group)
            total = total + sq
        return float(total.sqrt().item())

    def replica_batch(self, batch: Batch) -> tuple[Batch, slice]:
        """The rows of this rank's model replica (TP x PP x CP ranks), joined in rank order: the
        ranks of one replica compute on the same rows.

        The losses' global-batch keywords then count each row once per rank of the replica, in the
        token and sequence totals and in ``dp_size`` (the world) alike, so their ratio, which is
        all a loss uses, is that of the data-parallel replicas.
        """
        from megatron.core import parallel_state as mpu

        own = slice(0, len(batch))
        # the CP ranks' rows, then those of the model-parallel ranks (TP x PP) of each
        for group in (mpu.get_context_parallel_group(), mpu.get_model_parallel_group()):
            size = dist.get_world_size(group)
            if size == 1:
                continue
            parts: list[Any] = [None] * size
            dist.all_gather_object(parts, batch, group=group)
            offset = sum(len(p) for p in parts[: dist.get_rank(group)])
            batch, own = Batch.concat(parts), slice(own.start + offset, own.stop + offset)
        return batch, (slice(None) if own == slice(0, len(batch)) else own)

    # ------------------------------------------------------------------ weights

    def named_full_tensors(
        self, dtype: torch.dtype | None = torch.bfloat16
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Hugging Face names and full tensors, gathered over TP and EP one weight at a time.

        Collective: every rank iterates to the end together. Each rank casts its shard to
        ``dtype`` before the gather; with EP, each local expert slot is gathered over the EP ranks
        and yields that expert of every rank. With pipeline stages, each stage's tensors are then
        broadcast over the pipeline group in stage order, so every rank yields the whole model.
        """
        if self.sizes.pipeline == 1:
            yield from self._stage_full_tensors(dtype)
            return
        from megatron.core import parallel_state as mpu

        group, me = mpu.get_pipeline_model_parallel_group(), mpu.get_pipeline_model_parallel_rank()
        for stage in range(self.sizes.pipeline):
            tensors = self._stage_full_tensors(dtype) if stage == me else None
            yield from self._broadcast_stage(
                tensors, (stage, dtype), group, dist.get_global_rank(group, stage)
            )

    def _broadcast_stage(
        self, tensors: Iterator[tuple[str, torch.Tensor]] | None, key: tuple[int, Any], group: Any, src: int
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """One stage's tensors (``tensors`` on its ranks, None elsewhere) on every rank of the pipeline.

        The first time, each tensor's ``(name, shape, dtype)`` goes out before it; they are then
        known, and later weight syncs broadcast the tensors alone.
        """
        known = self._stage_meta.get(key)
        seen: list[tuple[str, torch.Size, torch.dtype]] = []
        while known is None or len(seen) < len(known):
            item = next(tensors, None) if tensors is not None else None
            if known is None:
                box: list[Any] = [None if item is None else (item[0], item[1].shape, item[1].dtype)]
                dist.broadcast_object_list(box, src=src, group=group)
                if box[0] is None:
                    self._stage_meta[key] = seen
                    return
            name, shape, kind = box[0] if known is None else known[len(seen)]
            seen.append((name, shape, kind))
            tensor = (
                item[1].contiguous()
                if item is not None
                else torch.empty(shape, dtype=kind, device=self.device)
            )
            dist.broadcast(tensor, src=src, group=group)
            yield name, tensor

    def _stage_full_tensors(self, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
        """This pipeline stage's weights under Hugging Face names, gathered over TP and EP."""
        from megatron.core import parallel_state as mpu

        tp_group = mpu.get_tensor_model_parallel_group()
        ep_group = mpu.get_expert_model_parallel_group()
        tp, ep = dist.get_world_size(tp_group), dist.get_world_size(ep_group)
        per_rank = self.layout.num_experts // ep if self.layout.num_experts else 0
        for name, param in self._named_params():
            if name == "output_layer.weight" and self.layout.tie_word_embeddings:
                continue  # the last stage's copy of the embedding, which the first stage yields
            local = param.detach().to(dtype or param.dtype)
            full = self._gather_tp(name, local, tp_group, tp)
            if is_expert(param) and ep > 1:
                shards = all_gather(full, ep_group, ep)
                for ep_rank, shard in enumerate(shards):
                    yield from megatron_tensor_to_hf(
                        global_expert_name(name, ep_rank, per_rank), shard, self.layout
                    )
            else:
                yield from megatron_tensor_to_hf(name, full, self.layout)

    @staticmethod
    def _gather_tp(name: str, local: torch.Tensor, group: Any, tp: int) -> torch.Tensor:
        if tp == 1 or tp_split_dim(name) is None:
            return local
        return gather_tensor_tp(name, all_gather(local, group, tp))

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_names(self) -> dict[str, nn.Parameter]:
        """Each parameter under a name unique to its shard (replicas share it, so DCP writes it once)."""
        from megatron.core import parallel_state as mpu

        tp, tp_rank = mpu.get_tensor_model_parallel_world_size(), mpu.get_tensor_model_parallel_rank()
        ep_rank = mpu.get_expert_model_parallel_rank()
        per_rank = self.layout.num_experts // self.sizes.expert if self.layout.num_experts else 0
        names: dict[str, nn.Parameter] = {}
        for name, param in self._named_params():
            key = global_expert_name(name, ep_rank, per_rank) if is_expert(param) else name
            names[shard_key(key, tp_rank, tp)] = param
        return names

    def frozen_tensors(self) -> dict[str, torch.Tensor]:
        """This rank's weights under their per-shard checkpoint names, for a frozen role's checkpoint
        (DCP loads into them in place)."""
        return {k: p.detach() for k, p in self._checkpoint_names().items()}

    @torch.no_grad()
    def load_hf_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace every weight with full Hugging Face-named tensors (the actor's, for ``ref.update_every``).

        Every rank gets the whole model and keeps its own shards, as at start-up.

        Raises:
            ValueError: The tensors do not cover this rank's model exactly.
        """
        hf_sd = {name: tensor.detach().to("cpu", torch.float32) for name, tensor in named_tensors}
        for chunk, shard in zip(
            self.module.stages, megatron_shard(hf_sd, self.layout, self.sizes), strict=True
        ):
            load_into(chunk, shard)

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """Model and AdamW state (this rank's shards, under per-shard names) plus the schedule and counters."""
        from torch.distributed.checkpoint.state_dict import _init_optim_state

        _init_optim_state(self.optimizer)  # zero moments before the first step, so a load has tensors to fill
        names = self._checkpoint_names()
        key_of = {id(p): k for k, p in names.items()}
        # this rank's share of the Adam states (all of them without the distributed optimizer)
        stepped = [p for g in self.optimizer.param_groups for p in g["params"]]
        optim_state = {key_of[id(p)]: dict(self.optimizer.state[p]) for p in stepped}
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [key_of[id(p)] for p in g["params"]]}
            for g in self.optimizer.param_groups
        ]
        return {
            "model": {k: p.detach() for k, p in names.items()},
            "optimizer": {"state": optim_state, "param_groups": groups},
            **self._schedule_state(),
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict_for_checkpoint` returned, after DCP filled its tensors in place.

        The model and optimizer tensors of that dict are this engine's own, so DCP's load already
        wrote them; the optimizer's hyperparameters and the schedule come from the saved JSON.
        """
        saved = state["optimizer"]["param_groups"]
        for group, saved_group in zip(self.optimizer.param_groups, saved, strict=True):
            group.update({k: v for k, v in saved_group.items() if k != "params"})
        self._restore_schedule(state)


_LAYER_PREFIX = "decoder.layers."


def _global_layer(name: str, offset: int) -> str:
    """A stage-local ``decoder.layers.{i}.`` name with the layer numbered over the whole model."""
    if offset == 0 or not name.startswith(_LAYER_PREFIX):
        return name
    index, _, rest = name[len(_LAYER_PREFIX) :].partition(".")
    return f"{_LAYER_PREFIX}{int(index) + offset}.{rest}"


def _check_sizes(sizes: ParallelSizes, hf_config: dict[str, Any]) -> None:
    """Refuse sizes the engine cannot run (the config rules and preflight refuse them first, in one line)."""
    if sizes.virtual_pipeline > 1 and sizes.pipeline == 1:
        raise ValueError("virtual pipeline stages need pipeline_parallel > 1")
    if sizes.sequence and sizes.tensor == 1:
        raise ValueError("sequence parallelism needs tensor_parallel > 1")
    if (sizes.context > 1 or sizes.sequence) and MegatronLayout.from_hf(hf_config).num_experts:
        raise ValueError("context and sequence parallelism are built for dense models only")
