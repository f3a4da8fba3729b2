"""What every training engine gives the roles, and the AdamW + schedule + clipping they share.

The trained roles (actor, critic) drive an engine through :class:`TrainingEngine` only: the
micro-batches of a pass go through :meth:`~TrainingEngine.run_micro_batches` (the role's forward
calls ``engine.module``, a root module whose forward ends at the heads, see
:mod:`rlkit.training.heads`; the role's ``consume`` turns the heads' outputs into a loss), then
:meth:`~TrainingEngine.optimizer_step` once per mini-batch and
:meth:`~TrainingEngine.scheduler_step` once per RL step. An engine with pipeline stages runs the
micro-batches through its schedule and calls ``consume`` on the last stage only;
:meth:`~TrainingEngine.reduce_stats` and :meth:`~TrainingEngine.from_last_stage` then give every
rank what the last stage computed. ``actor.strategy`` / ``critic.strategy``
pick the engine (:data:`POLICY_ENGINES`, :data:`VALUE_ENGINES`): FSDP2
(:mod:`rlkit.training.engine`) or Megatron-core (:mod:`rlkit.training.megatron_engine`); the roles
never branch on which.

:class:`OptimizedEngine` holds what both engines do the same way over plain torch parameters:
AdamW, the warmup + constant/cosine schedule in RL steps, clipping by the global norm (each
engine measures that norm over its own layout of shards), skipping a step whose norm is not
finite, moving optimizer states to the CPU between steps, and the checkpointed schedule and
counters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from rlkit.data.batch import Batch
from rlkit.hardware import device as hw
from rlkit.training.micro_batches import PackedMicroBatch
from rlkit.training.schedule import lr_lambda
from rlkit.training.stats import MiniBatchStats


class TrainingEngine(Protocol):
    """The role interface of a training engine (FSDP2 or Megatron-core)."""

    device: torch.device
    step_count: int
    optimizer_steps: int
    skipped_steps: int

    @property
    def module(self) -> nn.Module:
        """The root module whose forward ends at the heads (``PackedPolicy``'s signature)."""
        ...

    def lr(self) -> float: ...
    def train(self) -> None: ...
    def eval(self) -> None: ...
    def zero_grad(self) -> None: ...
    def grad_norm(self) -> float: ...
    def optimizer_step(self) -> tuple[float, bool]: ...
    def scheduler_step(self) -> None: ...
    def named_full_tensors(
        self, dtype: torch.dtype | None = torch.bfloat16
    ) -> Iterator[tuple[str, torch.Tensor]]: ...
    def state_dict_for_checkpoint(self) -> dict[str, Any]: ...
    def load_checkpoint_state(self, state: dict[str, Any]) -> None: ...
    def replica_batch(self, batch: Batch) -> tuple[Batch, slice]: ...
    def run_micro_batches(
        self, micro_batches: list[PackedMicroBatch], forward: Forward, consume: Consume, *, backward: bool
    ) -> None: ...
    def reduce_stats(self, stats: MiniBatchStats) -> dict[str, float]: ...
    def from_last_stage(self, value: T) -> T: ...
    @property
    def min_micro_batches(self) -> int: ...


class MicroBatchRunner(Protocol):
    """What a pass over micro-batches needs of the engine holding the module (see :class:`MicroBatchLoop`)."""

    @property
    def min_micro_batches(self) -> int: ...
    def run_micro_batches(
        self, micro_batches: list[PackedMicroBatch], forward: Forward, consume: Consume, *, backward: bool
    ) -> None: ...
    def from_last_stage(self, value: T) -> T: ...


#: a role's forward of one micro-batch: its call of ``engine.module`` (the heads' outputs)
Forward = Callable[[PackedMicroBatch], Any]
#: a role's use of those outputs: the micro-batch's loss (None in a pass without backward)
Consume = Callable[[PackedMicroBatch, Any], "torch.Tensor | None"]
T = TypeVar("T")


class MicroBatchLoop:
    """The micro-batch loop of an engine whose every rank holds all layers (no pipeline stages)."""

    @property
    def min_micro_batches(self) -> int:
        """The fewest micro-batches a pass may be cut into (a pipeline schedule may need more than one)."""
        return 1

    def run_micro_batches(
        self, micro_batches: list[PackedMicroBatch], forward: Forward, consume: Consume, *, backward: bool
    ) -> None:
        """``consume(mb, forward(mb))`` for each micro-batch in order; with ``backward``, the loss's backward."""
        for mb in micro_batches:
            loss = consume(mb, forward(mb))
            if backward and loss is not None:
                torch.autograd.backward(loss)

    def reduce_stats(self, stats: MiniBatchStats) -> dict[str, float]:
        """A mini-batch's metrics over all ranks (collective)."""
        return stats.reduce()

    def from_last_stage(self, value: T) -> T:
        """What the last pipeline stage computed (``consume``'s results), on every rank: here, ``value``."""
        return value


class OptimizedEngine(MicroBatchLoop):
    """AdamW over ``self.params`` (or a share of them) with the schedule, clipping, step skipping and counters.

    A subclass sets ``self.device`` and ``self.module``, calls :meth:`_setup_optimizer` and
    implements :meth:`grad_norm` (the global L2 norm over its shards); :meth:`_reduce_grads` runs
    first in each optimizer step (an engine whose gradients are not yet reduced over its
    data-parallel ranks does it there).
    """

    device: torch.device
    module: nn.Module
    optimizer_offload: bool = False

    def _setup_optimizer(
        self,
        params: list[nn.Parameter],
        *,
        stepped: list[nn.Parameter] | None = None,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float] | list[float],
        warmup_steps: int,
        total_steps: int,
        lr_schedule: str,
        min_lr_ratio: float,
        grad_clip: float,
    ) -> None:
        schedule_fn = lr_lambda(
            schedule=lr_schedule,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_lr_ratio=min_lr_ratio,
        )
        self.params = params  # every trained parameter (gradients, norms, clipping)
        betas = (float(betas[0]), float(betas[1]))  # a list from the config
        # the ones this rank's AdamW steps: all, or its share under a distributed optimizer
        stepped = self.params if stepped is None else stepped
        self.optimizer = adamw(stepped, lr=lr, betas=betas, weight_decay=weight_decay)
        self.scheduler = LambdaLR(self.optimizer, schedule_fn)
        # This run's settings: a resumed checkpoint's optimizer state brings its own (see _apply_settings).
        self._settings: dict[str, Any] = {
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "betas": betas,
        }
        self.grad_clip = grad_clip
        self.step_count = 0
        self.optimizer_steps = 0
        self.skipped_steps = 0

    def grad_norm(self) -> float:
        raise NotImplementedError

    def _reduce_grads(self) -> None:
        """Make every rank's gradients the global ones (nothing to do where backward did it)."""

    def _local_grads(self) -> list[torch.Tensor]:
        """This rank's gradient tensors, as the optimizer sees them."""
        return [p.grad for p in self.params if p.grad is not None]

    def replica_batch(self, batch: Batch) -> tuple[Batch, slice]:
        """The rows this rank computes on, and where its own rows sit in them.

        The controller gives each rank its own rows. Where every rank is its own model replica
        (FSDP: pure data parallelism) that is what it computes on; an engine whose ranks share a
        replica (Megatron's tensor parallelism) joins the replica's rows, and a role returns only
        the slice of per-row results that is this rank's.
        """
        return batch, slice(None)

    def lr(self) -> float:
        """The learning rate the next optimizer step uses."""
        return float(self.scheduler.get_last_lr()[0])

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def zero_grad(self) -> None:
        for param in self.params:  # not only the optimizer's: a distributed one steps a share
            param.grad = None

    def optimizer_step(self) -> tuple[float, bool]:
        """Clip by the global norm and step; skip (and count) the step when the norm is not finite.

        Returns:
            The global gradient norm before clipping and whether the optimizer stepped.
        """
        with torch.no_grad():
            self._reduce_grads()
            return self._clip_and_step()

    def _clip_and_step(self) -> tuple[float, bool]:
        norm = self.grad_norm()
        if not math.isfinite(norm):
            self.skipped_steps += 1
            self.zero_grad()
            return norm, False
        if self.grad_clip > 0 and norm > self.grad_clip:
            torch._foreach_mul_(self._local_grads(), self.grad_clip / (norm + 1e-6))
        if self.optimizer_offload:
            self._move_optimizer_state(self.device)
        self.optimizer.step()
        if self.optimizer_offload:
            self._move_optimizer_state(torch.device("cpu"))
        self._after_step()
        self.zero_grad()
        self.optimizer_steps += 1
        return norm, True

    def _after_step(self) -> None:
        """Make every rank's parameters the stepped ones (nothing to do where each rank stepped all)."""

    def scheduler_step(self) -> None:
        """Advance the schedule by one RL step."""
        self.scheduler.step()
        self.step_count += 1

    def _move_optimizer_state(self, device: torch.device) -> None:
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    state[key] = value.to(device, non_blocking=True)
        if device.type == "cpu":
            hw.synchronize()

    def _schedule_state(self) -> dict[str, Any]:
        """The checkpointed schedule and counters (beside the engine's model and optimizer tensors)."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "counters": {
                "step_count": self.step_count,
                "optimizer_steps": self.optimizer_steps,
                "skipped_steps": self.skipped_steps,
            },
        }

    def _restore_schedule(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_schedule_state` saved, then this run's optimizer settings."""
        self.scheduler.load_state_dict(state["scheduler"])
        counters = state.get("counters", {})
        self.step_count = int(counters.get("step_count", self.scheduler.last_epoch))
        self.optimizer_steps = int(counters.get("optimizer_steps", 0))
        self.skipped_steps = int(counters.get("skipped_steps", 0))
        self._apply_settings()
        if self.optimizer_offload:
            self._move_optimizer_state(torch.device("cpu"))

    def _apply_settings(self) -> None:
        """Put this run's lr, weight decay and betas back over what a checkpoint restored.

        ``load_state_dict`` restores each param group's hyperparameters and the scheduler's base
        rates as they were when the checkpoint was written, so a resume with a changed ``lr`` would
        train at the old one. Adam's moments and step counts stay restored; the schedule (this
        run's warmup, total steps and shape, which the scheduler does not save) is evaluated again
        at the restored step, so the next optimizer step uses ``lr * multiplier(step)``.
        """
        lr = self._settings["lr"]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = lr
            group["weight_decay"] = self._settings["weight_decay"]
            group["betas"] = self._settings["betas"]
        self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
        step = self.scheduler.last_epoch
        lrs = [lr * fn(step) for fn in self.scheduler.lr_lambdas]
        for group, value in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = value
        self.scheduler._last_lr = lrs  # what get_last_lr() reports; set by step() otherwise


def adamw(
    params: list[nn.Parameter], *, lr: float, betas: tuple[float, ...], weight_decay: float
) -> torch.optim.AdamW:
    """AdamW with the fused kernel where the parameters' device has one, else the foreach one."""
    kwargs: dict[str, Any] = {"lr": lr, "betas": betas, "weight_decay": weight_decay}
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, foreach=True, **kwargs)


def hf_config_dict(model: nn.Module) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of a loaded model (native ``CausalLM`` or ``HFCausalLM``)."""
    to_hf = getattr(model, "hf_config_dict", None)
    config: Any = model.config
    return dict(to_hf() if callable(to_hf) else config.to_hf())


def _fsdp_policy(model: nn.Module, engine: dict[str, Any], megatron: dict[str, Any]) -> TrainingEngine:
    from rlkit.training.engine import FSDPEngine
    from rlkit.training.heads import PackedPolicy

    del megatron
    return FSDPEngine(PackedPolicy(model), **engine)


def _megatron_policy(model: nn.Module, engine: dict[str, Any], megatron: dict[str, Any]) -> TrainingEngine:
    """Megatron's GPTModel from the loaded model's weights (converted; the HF model is then dropped)."""
    from rlkit.training.megatron_engine import MegatronEngine

    hf_sd = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    return MegatronEngine(hf_config_dict(model), hf_sd, **megatron, **engine)


def _fsdp_value(model: nn.Module, engine: dict[str, Any], megatron: dict[str, Any]) -> TrainingEngine:
    from rlkit.training.engine import FSDPEngine
    from rlkit.training.heads import PackedValue

    del megatron
    return FSDPEngine(PackedValue(model), **engine)


def _megatron_value(model: nn.Module, engine: dict[str, Any], megatron: dict[str, Any]) -> TrainingEngine:
    """The critic on Megatron: the value model's backbone converted, its ``score`` head kept."""
    from rlkit.training.megatron_engine import MegatronEngine

    hf_sd = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    return MegatronEngine(hf_config_dict(model), hf_sd, head="value", **megatron, **engine)


#: ``actor.strategy`` -> how the policy's engine is built from a loaded Hugging Face-named model,
#: the engine keywords (:class:`~rlkit.training.engine.EngineOptions`) and the ``actor.megatron`` sizes.
POLICY_ENGINES: dict[str, Callable[[nn.Module, dict[str, Any], dict[str, Any]], TrainingEngine]] = {
    "fsdp": _fsdp_policy,
    "megatron": _megatron_policy,
}
#: ``critic.strategy`` -> how the critic's engine is built from a loaded value model (same arguments).
VALUE_ENGINES: dict[str, Callable[[nn.Module, dict[str, Any], dict[str, Any]], TrainingEngine]] = {
    "fsdp": _fsdp_value,
    "megatron": _megatron_value,
}
