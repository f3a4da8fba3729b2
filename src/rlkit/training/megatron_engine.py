"""Megatron-core training engine: ``actor.strategy=megatron`` behind the same role interface as FSDP2.

:class:`MegatronEngine` builds a ``GPTModel`` from the Hugging Face-named weights the role loaded
(see :mod:`rlkit.training.megatron_model`), keeps fp32 master parameters on the device and runs
forwards under ``torch.autocast`` in the compute dtype, as the FSDP engine does on one rank. The
roles' micro-batch loops, losses (:mod:`rlkit.algos`) and global-batch loss scaling are shared
with FSDP unchanged: the engine only changes where the shards live.

Parallelism: tensor parallelism (TP) and expert parallelism (EP) come from Megatron's layers; the data-parallel (DP) ranks are the world over TP x EP. Each
optimizer step first averages gradients over the DP ranks (dense weights over Megatron's
data-parallel group, experts over its expert-data-parallel group: the same averaging FSDP's
reduce-scatter does, so the losses' ``dp_size`` scaling holds), then measures the global norm
(TP-split weights once per shard, replicated ones once), clips and steps AdamW
(:class:`~rlkit.training.engine_base.OptimizedEngine`). Pipeline and context parallelism need
Megatron's pipeline schedule and sequence splitting, which this engine does not drive: the config
refuses sizes above 1. Sequence parallelism is refused too: Megatron's local layer spec (the one
that needs no transformer-engine or apex) has norms that do not support it.

Checkpoints go through rlkit's layer (DCP): each tensor is saved under a name that is unique per
shard (``...weight@tp1of2`` for a TP-split weight, the global expert number for an expert), so
replicas write it once and a resume with the same parallel sizes is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rlkit.data.batch import Batch
from rlkit.training.distributed import ensure_process_group, training_device
from rlkit.training.engine import resolve_dtype
from rlkit.training.engine_base import OptimizedEngine
from rlkit.training.megatron_convert import (
    MegatronLayout,
    gather_tensor_tp,
    global_expert_name,
    megatron_tensor_to_hf,
    shard_key,
    tp_split_dim,
)
from rlkit.training.megatron_model import (
    MegatronPolicy,
    MegatronValue,
    ParallelSizes,
    build_gpt,
    init_parallel_state,
    load_into,
    megatron_shard,
    require_megatron,
    transformer_config,
)


def _is_expert(param: nn.Parameter) -> bool:
    # Megatron marks expert-parallel weights allreduce=False: they average over the expert-DP group.
    return not getattr(param, "allreduce", True)


class MegatronEngine(OptimizedEngine):
    """A Megatron-core ``GPTModel`` (TP / SP / EP shards) with AdamW, the schedule and clipping.

    Args:
        hf_config: the model's Hugging Face ``config.json`` dict.
        hf_state_dict: its weights under Hugging Face names (fp32, on the CPU); converted and sharded here.
        head: ``policy`` (the LM head: :class:`~rlkit.training.megatron_model.MegatronPolicy`) or
            ``value`` (the critic's ``score`` head: :class:`~rlkit.training.megatron_model.MegatronValue`).
        tensor_parallel, expert_parallel: Megatron's sizes (the rest of the world is data parallel).
        pipeline_parallel, virtual_pipeline, context_parallel, sequence_parallel: must be 1 / false
            (see the module docstring).
        seed: seeds Megatron's model-parallel RNG tracker on CUDA.
        dtype, optimizer_offload, gradient_checkpointing, lr, weight_decay, betas, warmup_steps,
            total_steps, lr_schedule, min_lr_ratio, grad_clip: as :class:`~rlkit.training.engine.FSDPEngine`
            (``gradient_checkpointing`` is Megatron's full, uniform activation recompute).
        torch_compile: compile each decoder layer's ``forward`` with ``torch.compile``, as the FSDP
            engine does (on one H200 it took the 0.5B update from 0.225 s to 0.163 s).
        param_offload: FSDP-only; accepted so the roles pass one set of keywords, unused.
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
    ) -> None:
        del param_offload  # FSDP's knob
        require_megatron()
        if (pipeline_parallel, virtual_pipeline, context_parallel, sequence_parallel) != (1, 1, 1, False):
            raise ValueError(
                "the Megatron engine runs pipeline_parallel = virtual_pipeline = context_parallel = 1 "
                "and sequence_parallel = false"
            )
        ensure_process_group()
        self.device = training_device()
        self.compute_dtype = resolve_dtype(dtype)
        self.sizes = ParallelSizes(tensor=tensor_parallel, expert=expert_parallel)
        init_parallel_state(self.sizes)
        if self.device.type == "cuda":
            from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

            model_parallel_cuda_manual_seed(seed)
        self.hf_config = dict(hf_config)
        self.layout = MegatronLayout.from_hf(hf_config)
        config = transformer_config(hf_config, self.sizes, recompute=gradient_checkpointing)
        self.module = self._build_root(hf_config, hf_state_dict, config, head).to(self.device)
        if torch_compile:
            for layer in self.module.gpt.decoder.layers:
                layer.forward = torch.compile(layer.forward)
        self.optimizer_offload = optimizer_offload and self.device.type != "cpu"
        self._setup_optimizer(
            [p for p in self.module.parameters() if p.requires_grad],
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
        """The GPTModel with this rank's converted shard loaded, under the policy's or the value head."""
        gpt = build_gpt(hf, config)
        shard = megatron_shard(hf_sd, self.layout, self.sizes)
        if head == "policy":
            load_into(gpt, shard)
            return MegatronPolicy(gpt, self.compute_dtype)
        if head != "value":
            raise ValueError(f"unknown head {head!r}; valid: policy, value")
        del gpt.output_layer  # the critic reads hidden states into its own head
        score = nn.Linear(self.layout.hidden_size, 1)
        score.load_state_dict(
            {k.removeprefix("score."): shard.pop(k) for k in list(shard) if k.startswith("score.")}
        )
        load_into(gpt, shard)
        return MegatronValue(gpt, score, self.compute_dtype)

    def _named_params(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters under their Megatron names (the GPTModel's) and the value head's HF names."""
        for name, param in self.module.named_parameters():
            yield name.removeprefix("gpt."), param

    # ------------------------------------------------------------------ gradients

    def _reduce_grads(self) -> None:
        """Average gradients over the data-parallel replicas (dense and expert weights apart)."""
        from megatron.core import parallel_state as mpu

        groups = {False: mpu.get_data_parallel_group(), True: mpu.get_expert_data_parallel_group()}
        for expert, group in groups.items():
            grads = [p.grad for p in self.params if p.grad is not None and _is_expert(p) == expert]
            if not grads or dist.get_world_size(group) == 1:
                continue
            flat: torch.Tensor = _flatten(grads)
            dist.all_reduce(flat, group=group)
            flat.div_(dist.get_world_size(group))
            for grad, reduced in zip(grads, _unflatten(flat, grads), strict=True):
                grad.copy_(reduced)

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
                and _is_expert(p) == expert
                and (expert or param_is_not_tensor_parallel_duplicate(p))
            ]
            sq = torch.zeros((), dtype=torch.float32, device=self.device)
            if grads:
                sq = torch.stack(torch._foreach_norm(grads, 2.0)).pow(2).sum()
            if dist.get_world_size(group) > 1:
                dist.all_reduce(sq, group=group)
            total = total + sq
        return float(total.sqrt().item())

    def replica_batch(self, batch: Batch) -> tuple[Batch, slice]:
        """The rows of this rank's TP group, joined in TP-rank order (the TP ranks compute on the same rows).

        The losses' global-batch keywords then count each row once per TP rank, in the token and
        sequence totals and in ``dp_size`` (the world) alike, so their ratio, which is all a loss
        uses, is that of the data-parallel replicas.
        """
        from megatron.core import parallel_state as mpu

        group = mpu.get_tensor_model_parallel_group()
        tp = dist.get_world_size(group)
        if tp == 1:
            return batch, slice(None)
        parts: list[Any] = [None] * tp
        dist.all_gather_object(parts, batch, group=group)
        start = sum(len(p) for p in parts[: mpu.get_tensor_model_parallel_rank()])
        return Batch.concat(parts), slice(start, start + len(batch))

    # ------------------------------------------------------------------ weights

    def named_full_tensors(
        self, dtype: torch.dtype | None = torch.bfloat16
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Hugging Face names and full tensors, gathered over TP and EP one weight at a time.

        Collective: every rank iterates to the end together. Each rank casts its shard to
        ``dtype`` before the gather; with EP, each local expert slot is gathered over the EP ranks
        and yields that expert of every rank.
        """
        from megatron.core import parallel_state as mpu

        tp_group = mpu.get_tensor_model_parallel_group()
        ep_group = mpu.get_expert_model_parallel_group()
        tp, ep = dist.get_world_size(tp_group), dist.get_world_size(ep_group)
        per_rank = self.layout.num_experts // ep if self.layout.num_experts else 0
        for name, param in self._named_params():
            local = param.detach().to(dtype or param.dtype)
            full = self._gather_tp(name, local, tp_group, tp)
            if _is_expert(param) and ep > 1:
                shards = _all_gather(full, ep_group, ep)
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
        return gather_tensor_tp(name, _all_gather(local, group, tp))

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_names(self) -> dict[str, nn.Parameter]:
        """Each parameter under a name unique to its shard (replicas share it, so DCP writes it once)."""
        from megatron.core import parallel_state as mpu

        tp, tp_rank = mpu.get_tensor_model_parallel_world_size(), mpu.get_tensor_model_parallel_rank()
        ep_rank = mpu.get_expert_model_parallel_rank()
        per_rank = self.layout.num_experts // self.sizes.expert if self.layout.num_experts else 0
        names: dict[str, nn.Parameter] = {}
        for name, param in self._named_params():
            key = global_expert_name(name, ep_rank, per_rank) if _is_expert(param) else name
            names[shard_key(key, tp_rank, tp)] = param
        return names

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """Model and AdamW state (this rank's shards, under per-shard names) plus the schedule and counters."""
        from torch.distributed.checkpoint.state_dict import _init_optim_state

        _init_optim_state(self.optimizer)  # zero moments before the first step, so a load has tensors to fill
        names = self._checkpoint_names()
        key_of = {id(p): k for k, p in names.items()}
        optim_state = {key_of[id(p)]: dict(self.optimizer.state[p]) for p in self.params}
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


_flatten: Any = torch._utils._flatten_dense_tensors  # one buffer per all-reduce (untyped torch helpers)
_unflatten: Any = torch._utils._unflatten_dense_tensors


def _all_gather(tensor: torch.Tensor, group: Any, size: int) -> list[torch.Tensor]:
    shards = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(shards, tensor.contiguous(), group=group)
    return shards
