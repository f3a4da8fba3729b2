"""Config keys -> the keyword settings each role and engine takes (the one place they are mapped)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from rlkit.config.schema import RlkitConfig
from rlkit.errors import UserError
from rlkit.hardware.check import resolve_hardware


def resolve_device(cfg: RlkitConfig) -> str:
    """``hardware.device`` with ``auto`` resolved and checked against this machine's devices.

    Raises:
        UserError: The machine lacks the device family, count or memory the profile expects.
    """
    hw_cfg = cfg.hardware
    return resolve_hardware(
        hw_cfg.device,
        devices_per_node=hw_cfg.devices_per_node,
        memory_per_device_gb=hw_cfg.memory_per_device_gb,
        joining_cluster=bool(hw_cfg.ray_address or os.environ.get("RAY_ADDRESS")),
    )


def compute_dtype(cfg: RlkitConfig, device: str) -> str:
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    return "float32" if device == "cpu" else "bfloat16"


def _engine(cfg: RlkitConfig, device: str) -> dict[str, Any]:
    return {
        "model_path": cfg.model.path,
        "dtype": compute_dtype(cfg, device),
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "torch_compile": cfg.model.torch_compile and device != "cpu",
        "seed": cfg.trainer.seed,
    }


def actor_settings(cfg: RlkitConfig, device: str) -> dict[str, Any]:
    a = cfg.actor
    return {
        **_engine(cfg, device),
        "param_offload": a.param_offload,
        "optimizer_offload": a.optimizer_offload,
        "lr": a.lr,
        "weight_decay": a.weight_decay,
        "betas": tuple(a.betas),
        "warmup_steps": a.warmup_steps,
        "total_steps": _optimizer_steps(cfg),
        "lr_schedule": a.lr_schedule,
        "min_lr_ratio": a.min_lr_ratio,
        "grad_clip": a.grad_clip,
        "micro_batch_tokens": a.micro_batch_tokens,
        "lora_rank": cfg.model.lora_rank,
        "lora_alpha": cfg.model.lora_alpha,
        "lora_target_modules": list(cfg.model.lora_target_modules),
        "strategy": a.strategy,
        "megatron": _plain(a.megatron) if a.strategy == "megatron" else None,
    }


def ref_is_actor_base(cfg: RlkitConfig) -> bool:
    """Whether the reference policy is the actor's own frozen base (LoRA, never refreshed).

    A LoRA actor trains only its adapters, so its base weights stay the initial policy: its log-probs
    with the adapters off are the reference's, and no second model is built. A reference that
    ``ref.update_every`` refreshes from the actor is a separate role (it takes the merged weights).
    """
    return cfg.model.lora_rank > 0 and cfg.ref.update_every == 0


def _optimizer_steps(cfg: RlkitConfig) -> int:
    return cfg.trainer.total_steps * num_mini_batches(cfg) * cfg.actor.epochs


def num_mini_batches(cfg: RlkitConfig) -> int:
    batch, mini = cfg.data.batch_size, cfg.actor.mini_batch_size
    if mini <= 0 or batch % mini:
        raise UserError(
            f"actor.mini_batch_size={mini} must divide data.batch_size={batch}",
            hint=f"e.g. actor.mini_batch_size={batch}",
        )
    return batch // mini


def actor_update_settings(cfg: RlkitConfig) -> dict[str, Any]:
    a = cfg.actor
    return {
        "temperature": cfg.rollout.temperature,
        "num_mini_batches": num_mini_batches(cfg),
        "epochs": a.epochs,
        "loss_mode": a.loss_mode,
        "loss_agg_mode": a.loss_agg_mode,
        "clip_ratio_low": a.clip_ratio_low,
        "clip_ratio_high": a.clip_ratio_high,
        "clip_ratio_c": a.clip_ratio_c,
        "entropy_coeff": a.entropy_coeff,
        # "entropy_metric" is set by the trainer core: on where no old-log-prob pass reports actor/entropy
        "use_kl_loss": a.use_kl_loss,
        "kl_loss_coef": a.kl_loss_coef,
        "kl_loss_type": a.kl_loss_type,
        # loss modes read the keywords they use and ignore the rest
        "loss_kwargs": {"sppo_eta": a.sppo_eta},
        "gkd": _gkd(cfg),
    }


def _gkd(cfg: RlkitConfig) -> dict[str, Any] | None:
    """The actor's GKD term (``algo.distill`` with a top-k divergence), or None."""
    d = cfg.algo.distill
    if not d.teachers or d.loss == "pg_reverse_kl":
        return None
    return {"loss": d.loss, "coef": d.coef, "beta": d.beta}


def teacher_names(cfg: RlkitConfig) -> dict[str, str]:
    """``algo.distill.teachers`` as name -> model path (an entry without ``name=`` is its own name)."""
    named: dict[str, str] = {}
    for entry in cfg.algo.distill.teachers:
        name, sep, path = str(entry).partition("=")
        named[name if sep else entry] = path if sep else entry
    return named


def teacher_settings(cfg: RlkitConfig, device: str) -> dict[str, Any]:
    """The teachers' role settings: the reference role's, with each teacher's own model path."""
    settings = ref_settings(cfg, device)
    del settings["model_path"]
    return {"teachers": teacher_names(cfg), "column": cfg.algo.distill.teacher_key, **settings}


def ref_settings(cfg: RlkitConfig, device: str) -> dict[str, Any]:
    engine = _engine(cfg, device)
    del engine["gradient_checkpointing"]  # the reference never runs a backward pass
    return {
        **engine,
        "param_offload": cfg.ref.param_offload,
        "micro_batch_tokens": cfg.actor.micro_batch_tokens,
        "strategy": cfg.ref.strategy,
        "megatron": _plain(cfg.actor.megatron) if cfg.ref.strategy == "megatron" else None,
    }


def critic_settings(cfg: RlkitConfig, device: str) -> dict[str, Any]:
    c = cfg.critic
    return {
        **_engine(cfg, device),
        "model_path": c.model_path or cfg.model.path,
        "param_offload": c.param_offload,
        "lr": c.lr,
        "warmup_steps": c.warmup_steps,
        "total_steps": _optimizer_steps(cfg),
        "grad_clip": c.grad_clip,
        "micro_batch_tokens": c.micro_batch_tokens,
        "strategy": c.strategy,
        "megatron": _plain(cfg.actor.megatron) if c.strategy == "megatron" else None,
    }


def critic_update_settings(cfg: RlkitConfig) -> dict[str, Any]:
    return {
        "num_mini_batches": num_mini_batches(cfg),
        "epochs": cfg.actor.epochs,
        "cliprange_value": cfg.critic.cliprange_value,
        "loss_agg_mode": cfg.actor.loss_agg_mode,
    }


def resolve_rollout_engine(cfg: RlkitConfig) -> str:
    """Resolve ``rollout.engine`` (``auto`` included) for ``model.path`` in place; returns the engine.

    Runs on the driver before any worker starts, so the run's config.yaml names the engine used and
    an engine that cannot run the model fails with one line naming those that can.

    Raises:
        UserError: the model folder has no readable config.json, or the engine cannot run the model.
    """
    from rlkit.models import load_hf_config
    from rlkit.rollout.registry import resolve_engine

    cfg.rollout.engine = resolve_engine(
        cfg.rollout.engine, load_hf_config(cfg.model.path), engine_options(cfg)
    )
    return cfg.rollout.engine


def engine_options(cfg: RlkitConfig) -> dict[str, Any] | None:
    """The rollout engine's own config group (``rollout.<engine>``, e.g. ``rollout.vllm``), if it has one."""
    group = getattr(cfg.rollout, cfg.rollout.engine, None)
    if dataclasses.is_dataclass(group) and not isinstance(group, type):
        return dataclasses.asdict(group)
    return None


def rollout_settings(cfg: RlkitConfig, device: str) -> dict[str, Any]:
    return {
        "engine": cfg.rollout.engine,
        "model_path": cfg.model.path,
        "dtype": compute_dtype(cfg, device),
        "max_num_seqs": cfg.rollout.max_num_seqs,
        "cuda_graphs": cfg.rollout.cuda_graphs,
        "free_cache": cfg.rollout.free_cache,
        "gpu_memory_utilization": _memory_fraction(cfg.rollout.gpu_memory_utilization),
        "max_model_len": cfg.data.max_prompt_length + cfg.data.max_response_length,
        "seed": cfg.trainer.seed,
        "options": engine_options(cfg),
        "log_dir": cfg.trainer.out_dir,
        "multi_turn": _plain(cfg.rollout.multi_turn),
        "tokenizer": cfg.model.tokenizer,
        "partial_rollouts": cfg.trainer.partial_rollouts,
    }


def _plain(group: Any) -> dict[str, Any]:
    """A config group (a dataclass) as plain data for a worker's settings."""
    return dataclasses.asdict(group)


def _memory_fraction(value: float) -> float:
    if not 0 < value <= 1:
        raise UserError(
            f"rollout.gpu_memory_utilization must be in (0, 1], got {value}",
            hint="e.g. rollout.gpu_memory_utilization=0.5",
        )
    return float(value)


def reward_model_settings(cfg: RlkitConfig, device: str) -> dict[str, Any]:
    return {
        "model_path": cfg.reward.model_path,
        "dtype": compute_dtype(cfg, device),
        "max_length": cfg.data.max_prompt_length + cfg.data.max_response_length + 64,
    }
