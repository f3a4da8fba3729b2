"""Everything a run needs before its first step, gathered in one :class:`RunContext`.

Builds the run directory, tokenizer, datasets and sampler, the reward manager, and the Ray worker
groups (colocated: actor, rollout and, when needed, ref and critic share each device), and maps
config keys onto the settings each role takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from rlkit.algos import AdaptiveKLController, FixedKLController
from rlkit.config.schema import RlkitConfig
from rlkit.controller import ResourcePool, WorkerGroup, start_ray
from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.models import load_tokenizer, stop_token_ids
from rlkit.rewards import build_reward_manager, token_level_scores
from rlkit.trainer.data import TrainData, build_train_data
from rlkit.trainer.settings import (
    actor_settings,
    actor_update_settings,
    critic_settings,
    critic_update_settings,
    ref_settings,
    resolve_device,
    rollout_settings,
)
from rlkit.trainer.workers import ActorWorker, CriticWorker, RefWorker, RolloutWorker


@dataclass
class RunContext:
    """The live objects of one run; the trainer core only talks to these."""

    cfg: RlkitConfig
    run_dir: Path
    tokenizer: Any
    data: TrainData
    reward: Any
    group: WorkerGroup
    kl_ctrl: Any
    world_size: int
    start_step: int = 0
    config_dict: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.actor = self.group.role("actor")
        self.rollout = self.group.role("rollout")
        self.ref = self.group.role("ref") if "ref" in self.group.roles else None
        self.critic = self.group.role("critic") if "critic" in self.group.roles else None
        self.actor_update_settings = actor_update_settings(cfg)
        self.critic_update_settings = critic_update_settings(cfg)
        stops = stop_token_ids(self.tokenizer)
        base = {"max_tokens": cfg.data.max_response_length, "stop_token_ids": stops}
        self.train_sampling = {
            **base,
            "n": cfg.rollout.n,
            "temperature": cfg.rollout.temperature,
            "top_p": cfg.rollout.top_p,
            "top_k": cfg.rollout.top_k,
        }
        self.val_sampling = {**base, "n": cfg.rollout.val_n, "temperature": cfg.rollout.val_temperature}

    @property
    def val_data(self) -> Any:
        return self.data.val

    def next_prompts(self) -> Batch:
        return self.data.next_train_batch()

    def val_batches(self) -> Iterator[Batch]:
        return self.data.val_batches(self.cfg.data.val_batch_size)

    def generate(self, prompts: Batch, sampling: dict[str, Any]) -> Batch:
        return self.rollout.generate(prompts, sampling, self.data.pad_id, self.cfg.data.max_response_length)

    def score(self, batch: Batch) -> tuple[Batch, dict[str, float]]:
        """Decode the responses, score them, and put each score on the last response token."""
        mask = batch["response_mask"].bool()
        texts = self.tokenizer.batch_decode(
            [row[m].tolist() for row, m in zip(batch["responses"], mask, strict=True)],
            skip_special_tokens=True,
        )
        out = self.reward(
            responses=texts,
            ground_truths=list(batch["ground_truth"]),
            data_sources=[str(s) for s in batch["data_source"]],
            extra_infos=list(batch["extra_info"]),
            response_lengths=mask.sum(-1),
            max_response_length=self.cfg.data.max_response_length,
        )
        batch.set("token_level_scores", token_level_scores(out.scores, batch["response_mask"]))
        batch.set("seq_score", out.scores)
        return batch, dict(out.metrics)

    def save_checkpoint(self, step: int) -> None:
        """Export the actor's weights as a Hugging Face folder under ``checkpoints/step_N/hf``."""
        out = self.run_dir / "checkpoints" / f"step_{step}" / "hf"
        self.actor.export_hf(str(out), self.cfg.model.tokenizer or self.cfg.model.path)

    def close(self) -> None:
        self.group.shutdown()
        close = getattr(self.reward, "close", None)
        if close is not None:
            close()


def build_run(cfg: RlkitConfig) -> RunContext:
    """Set up a run of ``cfg``: run dir, data, rewards and workers."""
    device = resolve_device(cfg)
    run_dir = Path(cfg.trainer.out_dir)
    _refuse_unsupported_resume(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_dict = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(config_dict, dict)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config_dict)))
    torch.manual_seed(cfg.trainer.seed)
    np.random.seed(cfg.trainer.seed)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
    data = build_train_data(cfg, tokenizer)
    reward = build_reward_manager(
        cfg.reward.manager,
        custom_path=cfg.reward.custom.path,
        custom_name=cfg.reward.custom.name,
        # a user's scoring code always runs in sandboxed worker processes, never in the trainer
        num_workers=max(cfg.reward.num_workers, 1 if cfg.reward.custom.path else 0),
        timeout_s=cfg.reward.timeout_s,
        overlong_enable=cfg.reward.overlong.enable,
        overlong_buffer_len=cfg.reward.overlong.buffer_len,
        overlong_penalty_factor=cfg.reward.overlong.penalty_factor,
    )
    world = cfg.hardware.nodes * cfg.hardware.devices_per_node
    start_ray(cfg.hardware.ray_address)
    pool = ResourcePool(cfg.hardware.nodes, cfg.hardware.devices_per_node, device)
    roles: dict[str, type] = {"actor": ActorWorker, "rollout": RolloutWorker}
    init: dict[str, dict[str, Any]] = {
        "actor": actor_settings(cfg, device),
        "rollout": rollout_settings(cfg, device),
    }
    if cfg.actor.use_kl_loss or cfg.algo.use_kl_in_reward:
        roles["ref"], init["ref"] = RefWorker, ref_settings(cfg, device)
    if _critic_enabled(cfg):
        roles["critic"], init["critic"] = CriticWorker, critic_settings(cfg, device)
    group = WorkerGroup(pool, roles, init, call_timeout_s=cfg.hardware.stage_timeout_s)
    kl = cfg.algo.kl_ctrl
    kl_ctrl = (
        AdaptiveKLController(kl.kl_coef, kl.target_kl, kl.horizon)
        if kl.type == "adaptive"
        else FixedKLController(kl.kl_coef)
    )
    return RunContext(cfg, run_dir, tokenizer, data, reward, group, kl_ctrl, world, config_dict=config_dict)


def _critic_enabled(cfg: RlkitConfig) -> bool:
    if cfg.critic.enable is None:
        return cfg.algo.advantage == "gae"
    if cfg.algo.advantage == "gae" and not cfg.critic.enable:
        raise UserError(
            "algo.advantage=gae needs a critic", hint="set critic.enable=true or choose another estimator"
        )
    return cfg.critic.enable


def _refuse_unsupported_resume(cfg: RlkitConfig, run_dir: Path) -> None:
    """Never silently restart over an existing run: resuming is not built yet."""
    if cfg.trainer.resume == "never":
        return
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        raise UserError(
            f"{run_dir} already holds a run and resuming is not supported yet",
            hint="pass trainer.resume=never to start over in it, or choose another trainer.out_dir",
        )
    if cfg.trainer.resume not in ("auto", "never"):
        raise UserError(
            f"trainer.resume={cfg.trainer.resume}: resuming from a checkpoint is not supported yet"
        )
