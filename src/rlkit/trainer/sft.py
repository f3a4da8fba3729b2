"""The SFT trainer behind ``rlkit sft``: supervised fine-tuning on conversations, on Ray workers.

    conversations (data.batch_size per step, seeded sampler)
    -> train step on the worker group (FSDP2, packed micro-batches, assistant-token loss)
    -> metrics: train/loss, actor/lr, actor/grad_norm, throughput/tokens_per_s
    -> val/loss every sft.val_every steps
    -> Hugging Face export at checkpoints/step_N/hf every trainer.save_every steps and at the end

The exported folder is a complete model (LoRA adapters merged; with LoRA a PEFT adapter folder is
written next to it as ``adapter/``), so ``rlkit train grpo model.path=RUN/checkpoints/step_N/hf``
starts RL from it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from rlkit.config.compose import to_dataclass
from rlkit.config.schema import RlkitConfig
from rlkit.controller import ResourcePool, RoleHandle, WorkerGroup, start_ray
from rlkit.errors import UserError
from rlkit.logging import MetricsLogger
from rlkit.models import load_tokenizer
from rlkit.trainer.settings import compute_dtype, resolve_device
from rlkit.trainer.sft_data import SFTData, build_sft_data
from rlkit.trainer.sft_workers import SFTWorker


@dataclass
class SFTResult:
    """Where a finished SFT run put its outputs."""

    run_dir: Path
    hf_dir: Path
    """The last Hugging Face export (``checkpoints/step_N/hf``)."""
    adapter_dir: Path | None
    """The last PEFT adapter folder (LoRA runs only)."""
    num_truncated: int
    """Conversations cut to ``sft.max_length`` (training and validation)."""


def run_sft(cfg: DictConfig) -> SFTResult:
    """Run a composed SFT config."""
    return SFTTrainer(to_dataclass(cfg)).fit()


def sft_settings(cfg: RlkitConfig, device: str) -> dict[str, Any]:
    """Config keys -> :class:`~rlkit.training.sft.SFTRole` keywords (one optimizer step per SFT step)."""
    a, m = cfg.actor, cfg.model
    return {
        "model_path": m.path,
        "dtype": compute_dtype(cfg, device),
        "gradient_checkpointing": m.gradient_checkpointing,
        "param_offload": a.param_offload,
        "optimizer_offload": a.optimizer_offload,
        "lr": a.lr,
        "weight_decay": a.weight_decay,
        "betas": tuple(a.betas),
        "warmup_steps": a.warmup_steps,
        "total_steps": cfg.trainer.total_steps,
        "lr_schedule": a.lr_schedule,
        "min_lr_ratio": a.min_lr_ratio,
        "grad_clip": a.grad_clip,
        "micro_batch_tokens": a.micro_batch_tokens,
        "seed": cfg.trainer.seed,
        "lora_rank": m.lora_rank,
        "lora_alpha": m.lora_alpha,
        "lora_target_modules": list(m.lora_target_modules),
    }


class SFTTrainer:
    """Runs ``cfg.trainer.total_steps`` SFT steps of a composed config."""

    def __init__(self, cfg: RlkitConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.console = console or Console(soft_wrap=True)
        self.world = cfg.hardware.nodes * cfg.hardware.devices_per_node
        self.run_dir = Path(cfg.trainer.out_dir)
        self._saved: list[Path] = []
        self.config_dict: dict[str, Any] = {}

    def fit(self) -> SFTResult:
        """Train, export, and return where the outputs are."""
        cfg = self.cfg
        if cfg.trainer.total_steps < 1:
            raise UserError(f"trainer.total_steps must be at least 1, got {cfg.trainer.total_steps}")
        device = resolve_device(cfg)
        self._prepare_run_dir()
        torch.manual_seed(cfg.trainer.seed)
        np.random.seed(cfg.trainer.seed)
        tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
        data = build_sft_data(cfg, tokenizer, self.run_dir)
        val_size = len(data.val) if data.val is not None else 0
        self.console.print(
            f"SFT data: {len(data.train)} training and {val_size} validation conversations; "
            f"{data.num_truncated} truncated to sft.max_length={cfg.sft.max_length}",
            highlight=False,
        )
        start_ray(cfg.hardware.ray_address)
        pool = ResourcePool(cfg.hardware.nodes, cfg.hardware.devices_per_node, device)
        group = WorkerGroup(
            pool,
            {"sft": SFTWorker},
            {"sft": sft_settings(cfg, device)},
            call_timeout_s=cfg.hardware.stage_timeout_s,
        )
        try:
            self._loop(group.role("sft"), data)
        finally:
            group.shutdown()
        final = self._saved[-1]
        adapter = final.parent / "adapter"
        return SFTResult(self.run_dir, final, adapter if adapter.is_dir() else None, data.num_truncated)

    def _prepare_run_dir(self) -> None:
        """Refuse to write over a run's checkpoints (resuming SFT is not supported yet); write config.yaml."""
        cfg, ckpts = self.cfg, self.run_dir / "checkpoints"
        if cfg.trainer.resume != "never" and ckpts.is_dir() and any(ckpts.iterdir()):
            raise UserError(
                f"{self.run_dir} already holds a run and resuming SFT is not supported yet",
                hint="pass trainer.resume=never to start over in it, or choose another trainer.out_dir",
            )
        if cfg.trainer.resume not in ("auto", "never"):
            raise UserError(f"trainer.resume={cfg.trainer.resume}: resuming SFT is not supported yet")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resolved = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
        assert isinstance(resolved, dict)
        (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        self.config_dict = resolved

    # ------------------------------------------------------------------ the loop
    def _loop(self, sft: RoleHandle, data: SFTData) -> None:
        cfg = self.cfg
        total, val_every, save_every = cfg.trainer.total_steps, cfg.sft.val_every, cfg.trainer.save_every
        logger = MetricsLogger(
            self.run_dir,
            list(cfg.trainer.loggers),
            total_steps=total,
            project=cfg.trainer.project,
            experiment=cfg.trainer.experiment,
            config=self.config_dict,
        )
        try:
            if cfg.trainer.val_before_train and val_every > 0 and data.val is not None:
                logger.log(0, self._validate(sft, data))
            for step in range(1, total + 1):
                metrics = self._step(sft, data)
                if step == 1:
                    metrics["data/truncated"] = float(data.num_truncated)
                if data.val is not None and val_every > 0 and (step % val_every == 0 or step == total):
                    metrics.update(self._validate(sft, data))
                if step == total or (save_every > 0 and step % save_every == 0):
                    started = time.perf_counter()
                    self._save(sft, step)
                    metrics["timing/save_s"] = time.perf_counter() - started
                logger.log(step, metrics)
        finally:
            logger.close()

    def _step(self, sft: RoleHandle, data: SFTData) -> dict[str, float]:
        started = time.perf_counter()
        out = sft.train_step(data.next_train_batch(self.world))
        step_s = time.perf_counter() - started
        return {
            "train/loss": out["sft/loss"],
            # the console line shows sft/loss; train/loss is the name the metrics files keep
            "sft/loss": out["sft/loss"],
            "train/loss_tokens": out["sft/loss_tokens"],
            "train/tokens": out["sft/tokens"],
            "actor/lr": out["actor/lr"],
            "actor/grad_norm": out["actor/grad_norm"],
            "actor/skipped_steps": out["actor/skipped_steps"],
            "timing/step_s": step_s,
            "throughput/tokens_per_s": out["sft/tokens"] / step_s,
            "throughput/tokens_per_s_per_device": out["sft/tokens"] / step_s / self.world,
        }

    def _validate(self, sft: RoleHandle, data: SFTData) -> dict[str, float]:
        """Token-mean loss over the whole validation set (batches weighted by their loss tokens)."""
        started = time.perf_counter()
        size = max(self.cfg.data.val_batch_size, self.cfg.data.batch_size)
        loss_sum, tokens = 0.0, 0.0
        for batch in data.val_batches(size, self.world):
            out = sft.eval_loss(batch)
            loss_sum += out["val/loss"] * out["val/loss_tokens"]
            tokens += out["val/loss_tokens"]
        return {"val/loss": loss_sum / max(tokens, 1.0), "timing/val_s": time.perf_counter() - started}

    def _save(self, sft: RoleHandle, step: int) -> None:
        """Export ``checkpoints/step_N/hf`` (and ``adapter/`` with LoRA); keep the last ``trainer.keep_last``."""
        cfg = self.cfg
        folder = self.run_dir / "checkpoints" / f"step_{step}"
        sft.export_hf(str(folder / "hf"), cfg.model.tokenizer or cfg.model.path)
        if cfg.model.lora_rank > 0:
            sft.export_adapter(str(folder / "adapter"), cfg.model.path)
        self._saved.append(folder / "hf")
        keep = cfg.trainer.keep_last
        # Only checkpoints this run wrote are pruned: an older run's folders are never deleted.
        while keep > 0 and len(self._saved) > keep:
            shutil.rmtree(self._saved.pop(0).parent, ignore_errors=True)
