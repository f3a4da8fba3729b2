"""The SFT trainer behind ``rlkit sft``: supervised fine-tuning on conversations, on Ray workers.

    conversations (data.batch_size per step, seeded sampler)
    -> train step on the worker group (FSDP2, packed micro-batches, assistant-token loss)
    -> metrics: train/loss, actor/lr, actor/grad_norm, throughput/tokens_per_s
    -> val/loss every sft.val_every steps
    -> checkpoint every trainer.save_every steps and at the end

Checkpoints are those of RL (:mod:`rlkit.ckpt`: atomic ``checkpoints/step_N``, ``latest``,
``trainer.keep_last``), the model stored as the role ``actor``, so ``trainer.resume`` continues a run
exactly and ``rlkit ckpt merge`` / ``rlkit generate`` read them. Each step folder also holds ``hf/``, a
complete Hugging Face model (LoRA adapters merged; with LoRA a PEFT adapter folder ``adapter/`` too),
so ``rlkit train grpo model.path=RUN/checkpoints/step_N/hf`` starts RL from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from rlkit import ckpt
from rlkit.ckpt.layout import ROLE_STATE, read_json
from rlkit.config.compose import to_dataclass
from rlkit.config.schema import RlkitConfig
from rlkit.controller import ResourcePool, RoleHandle, WorkerGroup, start_ray
from rlkit.errors import UserError
from rlkit.logging import MetricsLogger
from rlkit.models import load_hf_config, load_tokenizer
from rlkit.trainer.lifecycle import deadlines
from rlkit.trainer.run_start import RunStart, open_run, restore_sampler
from rlkit.trainer.settings import compute_dtype, resolve_device
from rlkit.trainer.sft_data import SFTData, build_sft_data
from rlkit.trainer.sft_workers import ADAPTER_EXPORT_DIR, CHECKPOINT_ROLE, HF_EXPORT_DIR, SFTWorker


@dataclass
class SFTResult:
    """Where a finished SFT run put its outputs."""

    run_dir: Path
    hf_dir: Path
    """The Hugging Face export of the last checkpoint (``checkpoints/step_N/hf``)."""
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
        # null: on where the profile names the device's memory (the RL runs size their update instead)
        "gradient_checkpointing": (
            m.gradient_checkpointing
            if m.gradient_checkpointing is not None
            else cfg.hardware.memory_per_device_gb is not None
        ),
        "torch_compile": m.torch_compile and device != "cpu",
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
    """Runs ``cfg.trainer.total_steps`` SFT steps of a composed config, resuming per ``trainer.resume``."""

    def __init__(self, cfg: RlkitConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.console = console or Console(soft_wrap=True)
        self.world = cfg.hardware.nodes * cfg.hardware.devices_per_node
        self.run_dir = Path(cfg.trainer.out_dir or ".")  # the folder open_run picks, in fit()
        self.config_dict: dict[str, Any] = {}
        self.start_step = 0
        self.tokenizer: Any = None
        self._last_saved: Path | None = None

    def fit(self) -> SFTResult:
        """Train (from the checkpoint ``trainer.resume`` selects, if any) and return where the outputs are."""
        cfg = self.cfg
        if cfg.trainer.total_steps < 1:
            raise UserError(f"trainer.total_steps must be at least 1, got {cfg.trainer.total_steps}")
        device = resolve_device(cfg)
        start = self._open()
        try:
            return self._fit(start, device)
        finally:
            start.close()

    def _open(self) -> RunStart:
        """The run folder, locked, and the checkpoint ``trainer.resume`` selects (checked)."""
        cfg = self.cfg
        start = open_run(
            cfg, trainer="sft", hf_configs=lambda: {CHECKPOINT_ROLE: load_hf_config(cfg.model.path)}
        )
        self.run_dir, self.config_dict = start.run_dir, start.config_dict
        if start.point is not None:
            try:
                _check_lora_rank(start.point, cfg.model.lora_rank)
            except BaseException:
                start.close()
                raise
        return start

    def _fit(self, start: RunStart, device: str) -> SFTResult:
        cfg, point = self.cfg, start.point
        if point is not None and start.nothing_left:
            # nothing left to train: no data, no worker (the path as the run folder is named)
            return self._result(ckpt.checkpoints_dir(self.run_dir) / point.path.name, None)
        torch.manual_seed(cfg.trainer.seed)
        np.random.seed(cfg.trainer.seed)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
        data = build_sft_data(cfg, self.tokenizer, self.run_dir)
        if point is not None:
            # before anything in the run folder moves: other data or batch settings are refused here
            restore_sampler(data.sampler, point)
        ckpt.prepare_run_dir(self.run_dir, point)
        (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(self.config_dict)))
        val_size = len(data.val) if data.val is not None else 0
        self.console.print(
            f"SFT data: {len(data.train)} training and {val_size} validation conversations; "
            f"{data.num_truncated} truncated to sft.max_length={cfg.sft.max_length}",
            highlight=False,
        )
        limits = deadlines(cfg, device)
        start_ray(cfg.hardware.ray_address, connect_timeout_s=limits.connect_s)
        pool = ResourcePool(cfg.hardware.nodes, cfg.hardware.devices_per_node, device)
        group = WorkerGroup(
            pool,
            {"sft": SFTWorker},
            {"sft": sft_settings(cfg, device)},
            call_timeout_s=limits.stage_s,
            start_timeout_s=limits.start_s,
        )
        try:
            if point is not None:
                self._restore(group.role("sft"), point)
            self._loop(group.role("sft"), data)
        finally:
            group.shutdown()
        assert self._last_saved is not None  # the loop saves at its last step
        return self._result(self._last_saved, data)

    def _result(self, step_dir: Path, data: SFTData | None) -> SFTResult:
        adapter = step_dir / ADAPTER_EXPORT_DIR
        truncated = data.num_truncated if data is not None else 0
        return SFTResult(
            self.run_dir, step_dir / HF_EXPORT_DIR, adapter if adapter.is_dir() else None, truncated
        )

    # ------------------------------------------------------------------ resume
    def _restore(self, sft: RoleHandle, point: ckpt.ResumePoint) -> None:
        """Model, optimizer and schedule (resharded to this world size), worker and driver RNG."""
        ckpt.world_size_note(point, self.world)
        problems = [p for p in sft.load_checkpoint(str(point.path)) if p]
        if problems:
            raise UserError(f"cannot resume from {point.path}: {problems[0]}")
        ckpt.restore_rng(point.state["rng"])
        self.start_step = point.step

    # ------------------------------------------------------------------ the loop
    def _loop(self, sft: RoleHandle, data: SFTData) -> None:
        cfg = self.cfg
        start, total = self.start_step, cfg.trainer.total_steps
        val_every, save_every = cfg.sft.val_every, cfg.trainer.save_every
        logger = MetricsLogger(
            self.run_dir,
            list(cfg.trainer.loggers),
            total_steps=total,
            start_step=start,
            project=cfg.trainer.project,
            experiment=cfg.trainer.experiment,
            config=self.config_dict,
            console_every=cfg.trainer.log_every,
        )
        try:
            if cfg.trainer.val_before_train and val_every > 0 and start == 0 and data.val is not None:
                logger.log(0, self._validate(sft, data))
            save_timing: dict[str, float] = {}
            for step in range(start + 1, total + 1):
                metrics = self._step(sft, data)
                if step == 1:
                    metrics["data/truncated"] = float(data.num_truncated)
                if data.val is not None and val_every > 0 and (step % val_every == 0 or step == total):
                    metrics.update(self._validate(sft, data))
                metrics.update(save_timing)
                logger.log(step, metrics)  # on disk before the checkpoint of its step
                save_timing = {}
                if step == total or (save_every > 0 and step % save_every == 0):
                    started = time.perf_counter()
                    self._save(sft, data, step)
                    save_timing = {"timing/save_s": time.perf_counter() - started}  # in the next row
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

    def _save(self, sft: RoleHandle, data: SFTData, step: int) -> None:
        """Write ``checkpoints/step_N`` atomically: shards, RNG, sampler, and the ``hf/`` (``adapter/``) export."""
        cfg = self.cfg
        tokenizer_path = cfg.model.tokenizer or cfg.model.path

        def write_roles(folder: Path) -> None:
            sft.save_checkpoint(str(folder), tokenizer_path, cfg.model.path)

        keep_last = cfg.trainer.keep_last
        assert keep_last is not None, "open_run settles trainer.keep_last"
        final = ckpt.save_checkpoint(
            self.run_dir,
            step,
            trainer_state={"trainer": "sft", "sampler": data.sampler.state_dict(), "rng": ckpt.capture_rng()},
            config=self.config_dict,
            tokenizer=self.tokenizer,
            roles=[CHECKPOINT_ROLE],
            world_size=self.world,
            write_roles=write_roles,
            keep_last=keep_last,
        )
        # as the user named the run folder (save_checkpoint returns it resolved)
        self._last_saved = ckpt.checkpoints_dir(self.run_dir) / final.name


def _check_lora_rank(point: ckpt.ResumePoint, lora_rank: int) -> None:
    """Refuse a checkpoint trained with another ``model.lora_rank`` before any worker starts."""
    lora = read_json(point.path / CHECKPOINT_ROLE / ROLE_STATE).get("lora") or {}
    saved = int(lora.get("rank", 0))
    if saved != lora_rank:
        trained = f"LoRA adapters of rank {saved}" if saved else "every weight (no LoRA)"
        raise UserError(
            f"checkpoint {point.path} trained {trained}, but this run has model.lora_rank={lora_rank}",
            hint=f"resume with model.lora_rank={saved}, or start over with trainer.resume=never",
        )
