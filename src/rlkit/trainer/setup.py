"""Everything a run needs before its first step, gathered in one :class:`RunContext`.

Builds the run directory, tokenizer, datasets and sampler, the reward manager, and the Ray worker
groups (colocated: actor, rollout and, when needed, ref and critic share each device), and maps
config keys onto the settings each role takes. Saving and resuming go through :mod:`rlkit.ckpt`:
:func:`open_rl_run` picks and locks the run folder and resolves ``trainer.resume`` against the
config before any worker starts; the workers restore their shards right after they are built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from rlkit import ckpt
from rlkit.agents.setup import check_multi_turn
from rlkit.algos import AdaptiveKLController, FixedKLController
from rlkit.ckpt.lock import RunLock
from rlkit.config.schema import RlkitConfig
from rlkit.controller import ResourcePool, WorkerGroup, start_ray
from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.models import load_hf_config, load_tokenizer, stop_token_ids
from rlkit.profiling.profiler import ProfilerRole, ProfileWindow
from rlkit.rewards import build_reward_manager, token_level_scores
from rlkit.trainer.data import TrainData, build_train_data
from rlkit.trainer.feed import RolloutFeed
from rlkit.trainer.lane import RolloutLane
from rlkit.trainer.lifecycle import deadlines
from rlkit.trainer.plan import resolve_checkpointing
from rlkit.trainer.run_start import RunStart, open_run, restore_sampler
from rlkit.trainer.settings import (
    actor_settings,
    actor_update_settings,
    compute_dtype,
    critic_settings,
    critic_update_settings,
    ref_is_actor_base,
    ref_settings,
    resolve_device,
    resolve_rollout_engine,
    reward_model_settings,
    rollout_settings,
    teacher_settings,
)
from rlkit.trainer.transfer import CollectiveTransfer, resolve_weight_transfer
from rlkit.trainer.workers import (
    ActorWorker,
    CriticWorker,
    RefWorker,
    RewardModelWorker,
    RolloutWorker,
    TeacherWorker,
)

#: Size of one bucket of a split-placement weight transfer (an object of the object store, or one
#: broadcast of the collective transport).
WEIGHT_BUCKET_MB = 256.0


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
    run_lock: RunLock | None = None
    rollout_group: WorkerGroup | None = None  # the rollout engine's own workers (split placement)
    feed: RolloutFeed | None = None  # the draws generated ahead (set by the trainer core)
    queued: tuple[Path, list[dict[str, Any]]] | None = None  # the resume point's queued draws, to load

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.actor = self.group.role("actor")
        self.rollout = (self.rollout_group or self.group).role("rollout")
        self.lane = RolloutLane(concurrent=self.rollout_group is not None)
        self.transfer: CollectiveTransfer | None = None
        if self.rollout_group is not None and cfg.hardware.weight_transfer == "collective":
            dtype = compute_dtype(cfg, self.group.device)  # the rollout engine's, as it checksums
            self.transfer = CollectiveTransfer(
                self.group, self.rollout_group, self.lane, dtype, WEIGHT_BUCKET_MB
            )
        self.ref = self.group.role("ref") if "ref" in self.group.roles else None
        if self.ref is None and _ref_enabled(cfg) and ref_is_actor_base(cfg):
            self.ref = self.actor  # its base under the LoRA adapters (compute_ref_log_prob)
        self.teacher = self.group.role("teacher") if "teacher" in self.group.roles else None
        self.critic = self.group.role("critic") if "critic" in self.group.roles else None
        self.profiler = self.group.role("profiler") if "profiler" in self.group.roles else None
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

    def sync_weights(self, step: int, timeout_s: float) -> None:
        """Actor -> rollout engine, after the rollouts submitted before; every receiver checks the
        version and checksum. Split placement moves the weights in buckets through Ray's object store
        or a collective of their own (``hardware.weight_transfer``, :mod:`rlkit.trainer.transfer`);
        each leg has the deadline ``timeout_s`` (``hardware.sync_timeout_s``).

        With ``trainer.partial_rollouts=continue`` (object store only) the push does not queue
        behind the rollouts generating: it goes to the rollout workers at once, and a running
        generation takes the weights at its next step (the draws queued behind it start on them).
        """
        key = "hardware.sync_timeout_s"
        if self.rollout_group is None:
            self.group.call("rollout", "sync_weights", step, timeout_s=timeout_s, timeout_key=key)
            return
        if self.transfer is not None:
            self.transfer.push(step, timeout_s)
            return
        dtype = compute_dtype(self.cfg, self.group.device)  # the rollout engine's, as it checksums
        export = self.group.call(
            "actor", "export_weights", dtype, WEIGHT_BUCKET_MB, timeout_s=timeout_s, timeout_key=key
        )
        receivers = self.rollout_group

        def load() -> Any:
            return receivers.call(
                "rollout", "load_weights", step, export, timeout_s=timeout_s, timeout_key=key
            )

        if self.cfg.trainer.partial_rollouts == "continue":
            load()
        else:
            self.lane.run(load)

    def sleep_rollout(self) -> None:
        """Free the engine's KV cache for the update when it shares the trainer's devices."""
        if self.rollout_group is None:
            self.rollout.sleep()

    def rollout_gauges(self) -> list[dict[str, float]]:
        """Every rollout rank's gauges since the last call (after the calls submitted before)."""
        return self.lane.run(self.rollout.gauges)

    def score(self, batch: Batch) -> tuple[Batch, dict[str, float]]:
        """Decode the responses, score them, and put each score on the last response token."""
        mask = batch["response_mask"].bool()
        if "response_text" in batch:  # multi-turn: every turn, the tool and user ones included
            texts = [str(t) for t in batch["response_text"]]
        else:
            texts = self.tokenizer.batch_decode(
                [row[m].tolist() for row, m in zip(batch["responses"], mask, strict=True)],
                skip_special_tokens=True,
            )
        if "reward_model" in self.group.roles:
            return self._score_with_model(batch, texts)
        out = self.reward(
            responses=texts,
            ground_truths=list(batch["ground_truth"]),
            data_sources=[str(s) for s in batch["data_source"]],
            extra_infos=list(batch["extra_info"]),
            response_lengths=mask.sum(-1),
            max_response_length=self.cfg.data.max_response_length,
        )
        batch.set(
            "token_level_scores",
            _with_turn_scores(batch, token_level_scores(out.scores, batch["response_mask"])),
        )
        batch.set("seq_score", out.scores)
        for key in self.cfg.algo.gdpo_reward_keys:  # GDPO's components, as verl keeps them: columns
            if key in out.extra and key not in batch:
                batch.set(key, np.array(out.extra[key], dtype=object))
        return batch, dict(out.metrics)

    def _score_with_model(self, batch: Batch, texts: list[str]) -> tuple[Batch, dict[str, float]]:
        """Scores from the reward-model role instead of rules (the prompt is its last user message)."""
        prompts = [_last_user_message(messages) for messages in batch["raw_prompt"]]
        columns = Batch(non_tensors={"prompt_text": prompts, "response_text": texts})
        scores = self.group.role("reward_model").score(columns)["rm_scores"]
        batch.set(
            "token_level_scores", _with_turn_scores(batch, token_level_scores(scores, batch["response_mask"]))
        )
        batch.set("seq_score", scores)
        return batch, {}

    @property
    def trained_roles(self) -> dict[str, Any]:
        """The roles whose state a checkpoint holds: the trained ones, and the reference when
        ``ref.update_every`` refreshes it from the actor (otherwise it is the fixed initial model;
        the rollout engine is always a copy of the actor)."""
        roles = {"actor": self.actor}
        if self.critic is not None:
            roles["critic"] = self.critic
        if self.ref is not None and self.cfg.ref.update_every > 0:
            roles["ref"] = self.ref
        return roles

    def save_checkpoint(self, step: int) -> Path:
        """Write ``checkpoints/step_N`` atomically: every trained role's shards, RNG and driver state."""

        def write_roles(folder: Path) -> None:
            for handle in self.trained_roles.values():
                handle.save_checkpoint(str(folder))
            if self.feed is not None:  # the draws generated ahead belong to the run's state
                self.feed.save(folder)

        keep_last = self.cfg.trainer.keep_last
        assert keep_last is not None, "open_run settles trainer.keep_last"
        return ckpt.save_checkpoint(
            self.run_dir,
            step,
            trainer_state={
                "sampler": self.data.sampler.state_dict(),
                "kl_ctrl": self.kl_ctrl.state_dict(),
                "rng": ckpt.capture_rng(),
                "rollout_queue": self.feed.state_dict() if self.feed is not None else [],
            },
            config=self.config_dict,
            tokenizer=self.tokenizer,
            roles=list(self.trained_roles),
            world_size=self.world_size,
            write_roles=write_roles,
            keep_last=keep_last,
        )

    def restore(self, point: ckpt.ResumePoint) -> None:
        """Continue from ``point``: every trained role (resharded to this world size), data order, KL, RNG."""
        ckpt.world_size_note(point, self.world_size)
        for handle in self.trained_roles.values():
            problems = [p for p in handle.load_checkpoint(str(point.path)) if p]
            if problems:
                raise UserError(f"cannot resume from {point.path}: {problems[0]}")
        self.kl_ctrl.load_state_dict(point.state["kl_ctrl"])
        ckpt.restore_rng(point.state["rng"])
        self.start_step = point.step
        self.queued = (point.path, list(point.state.get("rollout_queue", [])))

    def start_profiler(self, window: ProfileWindow) -> None:
        """Start ``window.kind`` in every worker; files go to ``RUN/profile/``."""
        assert self.profiler is not None, "trainer.profile is set but the group has no profiler role"
        self.profiler.start(str(self.run_dir / "profile"), window.kind, window.tag)

    def stop_profiler(self) -> list[str]:
        """Stop the profilers; returns the files and folders they wrote (every rank's)."""
        assert self.profiler is not None, "trainer.profile is set but the group has no profiler role"
        return sorted({path for paths in self.profiler.stop() for path in paths})

    def close(self) -> None:
        try:
            self.lane.close()
            self._close_rollout()
            self.group.shutdown()
            if self.rollout_group is not None:
                self.rollout_group.shutdown()
            close = getattr(self.reward, "close", None)
            if close is not None:
                close()
        finally:
            if self.run_lock is not None:
                self.run_lock.release()  # the folder is free for the next run

    def _close_rollout(self) -> None:
        """Best effort: let the rollout engines close (a server one started stops) before the kill."""
        try:
            (self.rollout_group or self.group).role("rollout", timeout_s=60.0).close()
        except Exception:  # a broken group: its workers are gone or stuck; the kill follows
            pass


def open_rl_run(cfg: RlkitConfig) -> RunStart:
    """Open the run folder of an RL run (lock, resume point, checks), before Ray starts.

    The checks that need no folder (hardware, roles) come first: a run they refuse writes nothing.
    """
    resolve_device(cfg)
    _ref_enabled(cfg)
    _critic_enabled(cfg)
    resolve_rollout_engine(cfg)  # `auto` -> the engine used, so the saved config.yaml names it
    resolve_checkpointing(cfg)  # null -> the choice, the same
    resolve_weight_transfer(cfg, resolve_device(cfg))  # the same for the transport
    check_multi_turn(dataclasses.asdict(cfg.rollout.multi_turn))
    return open_run(cfg, trainer="rl", hf_configs=lambda: _trained_hf_configs(cfg))


def build_run(cfg: RlkitConfig, start: RunStart) -> RunContext:
    """Set up a run of ``cfg`` in the folder ``start`` opened: data, rewards and workers."""
    try:
        return _build(cfg, start)
    except BaseException:
        start.close()
        raise


def _build(cfg: RlkitConfig, start: RunStart) -> RunContext:
    device = resolve_device(cfg)
    run_dir, point, config_dict = start.run_dir, start.point, start.config_dict
    torch.manual_seed(cfg.trainer.seed)
    np.random.seed(cfg.trainer.seed)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
    data = build_train_data(cfg, tokenizer)
    if point is not None:
        # before anything in the run folder moves: other data or batch settings are refused here
        restore_sampler(data.sampler, point)
    ckpt.prepare_run_dir(run_dir, point)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config_dict)))
    reward = _reward_manager(cfg)
    world = cfg.hardware.nodes * cfg.hardware.devices_per_node
    limits = deadlines(cfg, device)
    start_ray(cfg.hardware.ray_address, connect_timeout_s=limits.connect_s)
    pool = ResourcePool(cfg.hardware.nodes, cfg.hardware.devices_per_node, device)
    split = cfg.hardware.placement == "split"
    rollout_group: WorkerGroup | None = None
    if split:  # the rollout engine's workers first: they take the pool's last slots
        world -= cfg.hardware.rollout_devices
        pool, rollout_pool = pool.split([world, cfg.hardware.rollout_devices])
        rollout_group = WorkerGroup(
            rollout_pool,
            {"rollout": RolloutWorker},
            {"rollout": rollout_settings(cfg, device)},
            call_timeout_s=limits.stage_s,
            start_timeout_s=limits.start_s,
        )
    roles, init = _trainer_roles(cfg, device, with_rollout=not split)
    try:
        group = WorkerGroup(pool, roles, init, call_timeout_s=limits.stage_s, start_timeout_s=limits.start_s)
    except BaseException:
        if rollout_group is not None:
            rollout_group.shutdown()
        raise
    kl = cfg.algo.kl_ctrl
    kl_ctrl = (
        AdaptiveKLController(kl.kl_coef, kl.target_kl, kl.horizon)
        if kl.type == "adaptive"
        else FixedKLController(kl.kl_coef)
    )
    run = RunContext(
        cfg,
        run_dir,
        tokenizer,
        data,
        reward,
        group,
        kl_ctrl,
        world,
        config_dict=config_dict,
        run_lock=start.lock,
        rollout_group=rollout_group,
    )
    if point is not None:
        try:
            run.restore(point)
        except BaseException:
            run.close()
            raise
    return run


def _reward_manager(cfg: RlkitConfig) -> Any:
    """The run's reward manager, from the ``reward`` group."""
    return build_reward_manager(
        cfg.reward.manager,
        custom_path=cfg.reward.custom.path,
        custom_name=cfg.reward.custom.name,
        # a user's scoring code always runs in sandboxed worker processes (0: the builder picks how many)
        num_workers=cfg.reward.num_workers,
        timeout_s=cfg.reward.timeout_s,
        step_timeout_s=cfg.reward.step_timeout_s,
        import_timeout_s=cfg.reward.import_timeout_s,
        on_error=cfg.reward.on_error,
        reward_model_path=cfg.reward.model_path,
        overlong_enable=cfg.reward.overlong.enable,
        overlong_buffer_len=cfg.reward.overlong.buffer_len,
        overlong_penalty_factor=cfg.reward.overlong.penalty_factor,
    )


def _trainer_roles(
    cfg: RlkitConfig, device: str, *, with_rollout: bool
) -> tuple[dict[str, type], dict[str, dict[str, Any]]]:
    """The roles of the trainer's worker group and their settings: the actor always; the rollout
    engine when colocated; the reference, teacher, critic, reward model and profiler where the
    config needs them."""
    roles: dict[str, type] = {"actor": ActorWorker}
    init: dict[str, dict[str, Any]] = {"actor": actor_settings(cfg, device)}
    if with_rollout:
        roles["rollout"], init["rollout"] = RolloutWorker, rollout_settings(cfg, device)
    if _ref_enabled(cfg) and not ref_is_actor_base(cfg):
        roles["ref"], init["ref"] = RefWorker, ref_settings(cfg, device)
    if cfg.algo.distill.teachers:
        roles["teacher"], init["teacher"] = TeacherWorker, teacher_settings(cfg, device)
    if _critic_enabled(cfg):
        roles["critic"], init["critic"] = CriticWorker, critic_settings(cfg, device)
    if cfg.reward.model_path:
        roles["reward_model"], init["reward_model"] = RewardModelWorker, reward_model_settings(cfg, device)
    if cfg.trainer.profile != "none":
        roles["profiler"] = ProfilerRole
    return roles, init


def _ref_enabled(cfg: RlkitConfig) -> bool:
    needed = cfg.actor.use_kl_loss or cfg.algo.use_kl_in_reward
    if cfg.ref.enable is None:
        return needed
    if needed and not cfg.ref.enable:
        raise UserError(
            "actor.use_kl_loss / algo.use_kl_in_reward need a reference model",
            hint="set ref.enable=true (or null), or turn the KL terms off",
        )
    return cfg.ref.enable


def _critic_enabled(cfg: RlkitConfig) -> bool:
    if cfg.critic.enable is None:
        return cfg.algo.advantage == "gae"
    if cfg.algo.advantage == "gae" and not cfg.critic.enable:
        raise UserError(
            "algo.advantage=gae needs a critic", hint="set critic.enable=true or choose another estimator"
        )
    return cfg.critic.enable


def _trained_hf_configs(cfg: RlkitConfig) -> dict[str, dict[str, Any]]:
    """Per role a checkpoint of this run holds, the ``config.json`` of the model this run builds."""
    hf = {"actor": load_hf_config(cfg.model.path)}
    if _critic_enabled(cfg):
        hf["critic"] = load_hf_config(cfg.critic.model_path or cfg.model.path)
    if _ref_enabled(cfg) and cfg.ref.update_every > 0:
        hf["ref"] = hf["actor"]
    return hf


def _with_turn_scores(batch: Batch, scores_BR: torch.Tensor) -> torch.Tensor:
    """Add a multi-turn batch's turn rewards (``turn_scores``, on each turn's last model token)."""
    if "turn_scores" not in batch:
        return scores_BR
    return scores_BR + batch["turn_scores"].to(scores_BR.dtype)


def _last_user_message(messages: Any) -> str:
    """Text of a prompt's last user turn (a raw string prompt is returned as is)."""
    if isinstance(messages, str):
        return messages
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return str(users[-1]) if users else ""
