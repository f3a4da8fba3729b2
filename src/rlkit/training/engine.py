"""FSDP2 training engine: sharding, mixed precision, AdamW, schedule, clipping, checkpoint state.

``FSDPEngine`` owns one sharded root module (see :mod:`rlkit.training.heads`), its optimizer and
its learning-rate schedule. The roles (actor, critic) drive it: forward/backward on micro-batches,
then :meth:`FSDPEngine.optimizer_step` once per mini-batch and :meth:`FSDPEngine.scheduler_step`
once per RL step.

Sharding: ``fully_shard`` on every decoder layer, then on the root (embeddings, final norm, heads).
Master weights and optimizer states stay fp32; with a low-precision ``dtype`` the layers compute in
it and gradients are reduced in fp32. On a single rank there is nothing to shard, and FSDP2's
per-layer hooks (gather, cast, reduce; about a millisecond of host time per layer and pass) would
make a small model's step host-bound: there the module stays a plain one on the device, its
forward runs under ``torch.autocast`` in the compute dtype (linear layers cast their fp32 weights
once per pass, as FSDP's gather does) and gradients accumulate in fp32 on the fp32 parameters,
which is what FSDP computes on one rank. ``param_offload`` keeps parameters, gradients and optimizer
states on the CPU (``CPUOffloadPolicy``: the optimizer step runs on the CPU); ``optimizer_offload``
alone moves only the optimizer states to the CPU between steps.

Without an initialised process group the engine starts a single-process one (see
:func:`rlkit.training.distributed.ensure_process_group`), so world size 1 takes the same path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypedDict

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from rlkit.hardware import device as hw
from rlkit.training.distributed import dp_mesh, ensure_process_group, training_device
from rlkit.training.engine_base import OptimizedEngine


class EngineOptions(TypedDict, total=False):
    """The :class:`FSDPEngine` keywords the trained roles pass through (``**engine`` of
    ``ActorRole``, ``CriticRole`` and ``SFTRole``); see :class:`FSDPEngine` for each."""

    dtype: str
    param_offload: bool
    optimizer_offload: bool
    gradient_checkpointing: bool
    lr: float
    weight_decay: float
    betas: tuple[float, float] | list[float]
    warmup_steps: int
    total_steps: int
    lr_schedule: str
    min_lr_ratio: float
    grad_clip: float
    torch_compile: bool


_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """The compute dtype: ``"auto"``/None is bf16 on accelerators and fp32 on the CPU.

    bf16 on the CPU works but is slow; the CPU default is fp32 so CPU tests and runs are fast and exact.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float32 if hw.device_type() == "cpu" else torch.bfloat16
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def decoder_layers(module: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a model (each becomes one FSDP unit).

    Looks for the first ``nn.ModuleList`` named ``layers`` or ``h`` (Llama/Qwen and GPT-2 style
    layouts); a model without one is sharded as a single unit at the root.
    """
    for name, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h"):
            return list(child)
    return []


def shard_module(
    module: nn.Module,
    *,
    compute_dtype: torch.dtype,
    param_offload: bool = False,
    reshard_after_forward: bool | None = None,
    torch_compile: bool = False,
) -> nn.Module:
    """Apply FSDP2 to ``module`` in place: one unit per decoder layer, then the root.

    Parameters must be fp32 (the master copy); FSDP moves them to this rank's device (or keeps
    them on the CPU with ``param_offload``). ``reshard_after_forward=None`` frees each layer's
    gathered parameters after its forward only when there is more than one rank: on one rank
    the gathered copy is the whole layer in the compute dtype anyway, and keeping it through
    backward saves two gathers (recompute and backward) per layer and micro-batch. On one rank
    (unless parameters are offloaded to the CPU) the module is not sharded at all; see the module
    docstring.
    ``torch_compile`` compiles each layer's ``forward`` (not the module, so the FSDP hooks stay
    outside the graph and parameter names keep no ``_orig_mod`` prefix).
    """
    device = training_device()
    if dist.get_world_size() == 1 and not (param_offload and device.type != "cpu"):
        return _single_device(module, device, compute_dtype, torch_compile)
    mesh = dp_mesh()
    if reshard_after_forward is None:
        reshard_after_forward = mesh.size() > 1
    if compute_dtype == torch.float32:
        mp = MixedPrecisionPolicy()
    else:
        mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    # Offloading to the CPU only means something when training runs on an accelerator.
    offload: OffloadPolicy = (
        CPUOffloadPolicy(pin_memory=True) if param_offload and device.type != "cpu" else OffloadPolicy()
    )
    for layer in decoder_layers(module):
        if torch_compile:
            layer.forward = torch.compile(layer.forward)
        fully_shard(
            layer,
            mesh=mesh,
            mp_policy=mp,
            offload_policy=offload,
            reshard_after_forward=reshard_after_forward,
        )
    fully_shard(module, mesh=mesh, mp_policy=mp, offload_policy=offload)
    return module


def _single_device(
    module: nn.Module, device: torch.device, compute_dtype: torch.dtype, torch_compile: bool
) -> nn.Module:
    """The one-rank counterpart of :func:`shard_module`: same parameters and names, no FSDP hooks."""
    module.to(device)
    if torch_compile:
        for layer in decoder_layers(module):
            layer.forward = torch.compile(layer.forward)
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    if dtypes - {compute_dtype}:
        forward = module.forward

        def autocast_forward(*args: Any, **kwargs: Any) -> Any:
            with torch.autocast(device.type, dtype=compute_dtype):
                return forward(*args, **kwargs)

        module.forward = autocast_forward  # an instance attribute: names and state dict unchanged
    return module


def _persistent_buffers(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for mod_name, mod in module.named_modules():
        for name, buf in mod.named_buffers(recurse=False):
            if buf is not None and name not in mod._non_persistent_buffers_set:
                yield (f"{mod_name}.{name}" if mod_name else name), buf


def named_full_tensors(
    module: nn.Module, dtype: torch.dtype | None = torch.bfloat16
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, full tensor)`` one parameter at a time, gathered over the mesh.

    Names are the module's own (Hugging Face names for the roles' roots); a tied parameter comes once,
    under its first name (``model.embed_tokens.weight``, not ``lm_head.weight``), as Hugging Face
    checkpoints store it. Each rank casts its shard to ``dtype`` before the gather (half the traffic
    of gathering fp32). Every rank must iterate to the end together: each item is a collective.
    """
    device = training_device()
    items = list(module.named_parameters()) + list(_persistent_buffers(module))
    for name, tensor in items:
        t = tensor.detach()
        if isinstance(t, DTensor):
            local = t.to_local()
            local = local.to(device=device, dtype=dtype or local.dtype, non_blocking=True)
            full = DTensor.from_local(
                local, t.device_mesh, t.placements, shape=t.shape, stride=t.stride(), run_check=False
            ).full_tensor()
        else:
            full = t.to(device=device, dtype=dtype or t.dtype)
        yield name, full


class FSDPEngine(OptimizedEngine):
    """One FSDP2-sharded module (a plain one on a single rank) with AdamW, a warmup +
    constant/cosine schedule and clipping.

    Args:
        module: the root module (fp32 parameters); sharded in place.
        dtype: compute dtype, ``"auto"`` (bf16 on accelerators, fp32 on CPU), ``"bfloat16"``, ``"float32"``.
        param_offload: keep parameters, gradients and optimizer states on the CPU (CPUOffloadPolicy).
        optimizer_offload: move only the optimizer states to the CPU between optimizer steps.
        gradient_checkpointing: recompute each layer's activations in backward.
        lr, weight_decay, betas: AdamW settings (weight decay on every parameter, as verl).
        warmup_steps, total_steps, lr_schedule, min_lr_ratio: the schedule, in RL steps.
        grad_clip: clip the global gradient norm to this (<= 0: no clipping, norm still measured).
        torch_compile: compile each decoder layer's forward with ``torch.compile``: fewer, fused
            kernels (norms, rotary, activations), worth it where the step is launch-bound (small
            models); costs a compile at the first step and a recompile when shapes first change.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
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
        ensure_process_group()
        self.device = training_device()
        self.compute_dtype = resolve_dtype(dtype)
        if gradient_checkpointing:
            module.set_gradient_checkpointing(True)  # type: ignore[operator]
        self.module = shard_module(
            module, compute_dtype=self.compute_dtype, param_offload=param_offload, torch_compile=torch_compile
        )
        self.param_offload = param_offload and self.device.type != "cpu"
        self.optimizer_offload = optimizer_offload and not self.param_offload and self.device.type != "cpu"
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

    def grad_norm(self) -> float:
        """The L2 norm of all gradients over all ranks (every rank gets the same value)."""
        locals_ = self._local_grads()
        sq = torch.zeros((), dtype=torch.float32, device=self.device)
        if locals_:
            norms = torch._foreach_norm([g.float() for g in locals_], 2.0)
            sq = torch.stack([n.to(self.device) for n in norms]).pow(2).sum()
        if dist.get_world_size() > 1:
            # Every gradient is a Shard(0) DTensor over the one data-parallel mesh, so the squared
            # norms of the local shards add up to the squared global norm.
            dist.all_reduce(sq, op=dist.ReduceOp.SUM)
        return float(sq.sqrt().item())

    def _local_grads(self) -> list[torch.Tensor]:
        grads = [p.grad for p in self.params if p.grad is not None]
        return [g.to_local() if isinstance(g, DTensor) else g for g in grads]

    def named_full_tensors(
        self, dtype: torch.dtype | None = torch.bfloat16
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Hugging Face names and gathered full tensors; see :func:`named_full_tensors`."""
        return named_full_tensors(self.module, dtype)

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """Sharded model and optimizer state (DTensors, for DCP) plus the schedule and counters."""
        model_sd, optim_sd = get_state_dict(self.module, self.optimizer, options=StateDictOptions())
        return {"model": model_sd, "optimizer": optim_sd, **self._schedule_state()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict_for_checkpoint` returned (after DCP filled it in)."""
        set_state_dict(
            self.module,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=StateDictOptions(),
        )
        self._restore_schedule(state)
