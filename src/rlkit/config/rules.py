"""Rules between config keys, checked at compose time (before Ray) from the config alone.

Each rule is the config-side statement of something the trainer relies on; the comment on each
names the code that needs it. Ranges of single keys live in :mod:`rlkit.config.ranges`.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from rlkit.errors import UserError


def _mini_batches(cfg: DictConfig) -> None:
    # trainer/settings.num_mini_batches: the actor and critic updates cut the step's prompts into
    # data.batch_size / actor.mini_batch_size optimizer steps.
    batch, mini = cfg.data.batch_size, cfg.actor.mini_batch_size
    if mini > batch or batch % mini:
        fits = max(d for d in range(1, batch + 1) if batch % d == 0 and d <= mini)
        raise UserError(
            f"actor.mini_batch_size={mini} must divide data.batch_size={batch} (prompts per optimizer step)",
            hint=f"e.g. actor.mini_batch_size={fits}",
        )


def _workers(cfg: DictConfig) -> None:
    # controller/dispatch.shard_payloads pads a batch that does not split evenly over the workers
    # with copies of its first rows, which an update would train on twice; training/passes.
    # mini_batches needs every worker to hold at least one row of each mini-batch.
    hw = cfg.hardware
    world = hw.nodes * hw.devices_per_node
    where = f"{world} workers (hardware.nodes={hw.nodes} x hardware.devices_per_node={hw.devices_per_node})"
    if hw.placement == "split":
        # trainer/setup: the rollout workers take hardware.rollout_devices slots, the trained roles the rest
        if hw.rollout_devices >= world:
            raise UserError(
                f"hardware.placement=split gives hardware.rollout_devices={hw.rollout_devices} of {where} "
                "to the rollout engine and none to training",
                hint=f"raise hardware.devices_per_node, or set hardware.rollout_devices below {world}",
            )
        world -= hw.rollout_devices
        where = f"{world} training workers (hardware.nodes x devices_per_node - rollout_devices)"
    if world == 1:
        return
    batch, n, mini = cfg.data.batch_size, cfg.rollout.n, cfg.actor.mini_batch_size
    if (batch * n) % world:
        raise UserError(
            f"data.batch_size x rollout.n = {batch} x {n} = {batch * n} rows do not split evenly over {where}",
            hint=f"make data.batch_size x rollout.n a multiple of {world}",
        )
    if mini * n < world:
        raise UserError(
            f"actor.mini_batch_size x rollout.n = {mini} x {n} rows per optimizer step leave some of the "
            f"{where} without a row",
            hint=f"make actor.mini_batch_size x rollout.n at least {world}",
        )


def _weight_transfer(cfg: DictConfig) -> None:
    # trainer/transfer.CollectiveTransfer: the collective joins the actor's rank 0 and the rollout
    # workers of another pool (split placement), over gloo (CPU) or NCCL (CUDA, ROCm); NPU has neither.
    hw = cfg.hardware
    if hw.weight_transfer != "collective":
        return
    if hw.placement != "split":
        raise UserError(
            f"hardware.weight_transfer=collective moves weights between separate pools, but "
            f"hardware.placement={hw.placement} (the rollout engine takes them in-process)",
            hint="set hardware.placement=split, or hardware.weight_transfer=auto",
        )
    if hw.device == "npu":
        raise UserError(
            "hardware.weight_transfer=collective has no backend on npu (gloo on CPU, NCCL on CUDA/ROCm)",
            hint="set hardware.weight_transfer=object_store (or auto)",
        )


def _profile_steps(cfg: DictConfig) -> None:
    # profiling/profiler.ProfileWindow.from_settings: [first, last], 1 <= first <= last.
    steps = list(cfg.trainer.profile_steps)
    if len(steps) != 2 or steps[0] > steps[1]:
        raise UserError(
            f"trainer.profile_steps={steps} must be [first, last] with first <= last",
            hint="e.g. trainer.profile_steps=[2,3]",
        )
    if cfg.trainer.profile != "none" and steps[0] > cfg.trainer.total_steps:
        raise UserError(
            f"trainer.profile_steps starts at step {steps[0]} but the run has {cfg.trainer.total_steps} steps "
            "(trainer.total_steps)",
            hint=f"e.g. trainer.profile_steps=[1,{cfg.trainer.total_steps}]",
        )


def _reference_and_critic(cfg: DictConfig) -> None:
    # trainer/setup: the KL terms read the reference model's log-probs; GAE reads the critic's values.
    if cfg.ref.enable is False and (cfg.actor.use_kl_loss or cfg.algo.use_kl_in_reward):
        raise UserError(
            "actor.use_kl_loss / algo.use_kl_in_reward need a reference model, but ref.enable=false",
            hint="set ref.enable=true (or null), or turn the KL terms off",
        )
    if cfg.critic.enable is False and cfg.algo.advantage == "gae":
        raise UserError(
            "algo.advantage=gae needs a critic, but critic.enable=false",
            hint="set critic.enable=true (or null), or choose another algo.advantage",
        )


def _reward(cfg: DictConfig) -> None:
    # rewards/managers.build_reward_manager: the batch manager calls a user's batched function;
    # overlong_penalty ramps over the last buffer_len tokens of data.max_response_length.
    if cfg.reward.manager == "batch" and not cfg.reward.custom.path:
        raise UserError(
            "reward.manager=batch needs a batched function, but reward.custom.path is not set",
            hint="set reward.custom.path (and reward.custom.name) to fn(data_sources, solution_strs, "
            "ground_truths, extra_infos) -> list",
        )
    overlong = cfg.reward.overlong
    if overlong.enable and overlong.buffer_len > cfg.data.max_response_length:
        raise UserError(
            f"reward.overlong.buffer_len={overlong.buffer_len} is longer than "
            f"data.max_response_length={cfg.data.max_response_length}",
            hint=f"e.g. reward.overlong.buffer_len={max(1, cfg.data.max_response_length // 5)}",
        )


def _gdpo_and_rollout_correction(cfg: DictConfig) -> None:
    # algos/advantages.compute_gdpo_outcome_advantage takes one weight per component;
    # algos/rollout_correction.parse_rollout_is_threshold needs lower <= upper.
    algo = cfg.algo
    weights, keys = algo.gdpo_reward_weights, list(algo.gdpo_reward_keys)
    if weights is not None and len(weights) != len(keys):
        raise UserError(
            f"algo.gdpo_reward_weights has {len(weights)} weights for {len(keys)} algo.gdpo_reward_keys",
            hint="give one weight per reward key, or algo.gdpo_reward_weights=null for 1 each",
        )
    rc = algo.rollout_correction
    lower = rc.rollout_is_threshold_lower
    if lower is not None and lower > rc.rollout_is_threshold:
        raise UserError(
            f"algo.rollout_correction.rollout_is_threshold_lower={lower} exceeds "
            f"rollout_is_threshold={rc.rollout_is_threshold}",
            hint="IcePop keeps weights in [lower, upper]: e.g. lower 0.5, upper 5.0",
        )


def _bypass(cfg: DictConfig) -> None:
    # trainer/core: with actor.old_log_probs=rollout the old log-probs *are* the rollout log-probs, so
    # rollout-correction weights exp(old - rollout) would all be 1, and no old-log-prob pass runs to
    # give the optimal token baseline its sum of squared probabilities.
    if cfg.actor.old_log_probs != "rollout":
        return
    if cfg.algo.rollout_correction.rollout_is not in ("none", "auto"):
        raise UserError(
            "algo.rollout_correction.rollout_is needs the recomputed old log-probs; "
            "actor.old_log_probs=rollout makes every weight 1",
            hint="set actor.old_log_probs=recompute, or algo.rollout_correction.rollout_is=none",
        )
    if cfg.algo.advantage == "optimal_token_baseline":
        raise UserError(
            "algo.advantage=optimal_token_baseline needs the old-log-prob pass; actor.old_log_probs=rollout skips it",
            hint="set actor.old_log_probs=recompute",
        )


#: what ``actor.strategy=megatron`` needs installed (training/megatron_model raises the same line)
MEGATRON_INSTALL = 'pip install "rlkit[megatron]" (megatron-core >= 0.19 needs Python >= 3.12; 0.16.1 is the newest for 3.11)'


def _megatron(cfg: DictConfig) -> None:
    # training/megatron_engine.MegatronEngine: TP (with sequence parallelism), PP (Megatron's 1F1B
    # schedule, interleaved with virtual stages), CP and EP over the training world (the rest is
    # data parallel); no LoRA; top-k distillation terms and OTB's sum of squares only at TP=1
    # (megatron_model.MegatronPolicy). The model's shape is checked in trainer/preflight.
    actor, sizes = cfg.actor, cfg.actor.megatron
    users = [role for role in ("actor", "critic", "ref") if cfg[role].strategy == "megatron"]
    if not users:
        changed = [
            f"{k}={sizes[k]}"
            for k, v in {
                "tensor_parallel": 1,
                "pipeline_parallel": 1,
                "virtual_pipeline": 1,
                "expert_parallel": 1,
                "context_parallel": 1,
                "sequence_parallel": False,
            }.items()
            if sizes[k] != v
        ]
        if changed:
            raise UserError(
                f"actor.megatron.{changed[0]} only applies to actor.strategy=megatron (or critic.strategy, ref.strategy)",
                hint="set actor.strategy=megatron",
            )
        return
    if importlib.util.find_spec("megatron") is None or importlib.util.find_spec("megatron.core") is None:
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise UserError(
            f"{users[0]}.strategy=megatron needs megatron-core, not installed here (Python {python})",
            hint=MEGATRON_INSTALL,
        )
    if sizes.sequence_parallel and sizes.tensor_parallel == 1:
        raise UserError(
            "actor.megatron.sequence_parallel=true needs actor.megatron.tensor_parallel > 1 (it cuts the sequence over the TP ranks)",
            hint="set actor.megatron.tensor_parallel, or actor.megatron.sequence_parallel=false",
        )
    if sizes.virtual_pipeline > 1 and sizes.pipeline_parallel == 1:
        raise UserError(
            f"actor.megatron.virtual_pipeline={sizes.virtual_pipeline} needs actor.megatron.pipeline_parallel > 1",
            hint="set actor.megatron.pipeline_parallel, or actor.megatron.virtual_pipeline=1",
        )
    hw = cfg.hardware
    world = hw.nodes * hw.devices_per_node - (hw.rollout_devices if hw.placement == "split" else 0)
    for key in ("tensor_parallel", "pipeline_parallel", "context_parallel", "expert_parallel"):
        if world % sizes[key]:
            raise UserError(
                f"actor.megatron.{key}={sizes[key]} does not divide the {world} training devices",
                hint=f"make actor.megatron.{key} a divisor of {world}",
            )
    replica = sizes.tensor_parallel * sizes.pipeline_parallel * sizes.context_parallel
    if world % replica:
        raise UserError(
            f"actor.megatron.tensor_parallel x pipeline_parallel x context_parallel = {replica} does not divide the {world} training devices",
            hint=f"make their product a divisor of {world}",
        )
    if cfg.ref.strategy == "megatron" and cfg.ref.param_offload:
        raise UserError(
            "ref.param_offload=true needs ref.strategy=fsdp (Megatron keeps the reference on the device)",
            hint="set ref.param_offload=false, or ref.strategy=fsdp",
        )
    if actor.strategy == "megatron" and cfg.model.lora_rank > 0:
        raise UserError(
            f"model.lora_rank={cfg.model.lora_rank} needs actor.strategy=fsdp",
            hint="set model.lora_rank=0, or actor.strategy=fsdp",
        )
    topk = cfg.algo.distill.teachers and cfg.algo.distill.loss != "pg_reverse_kl"
    if (
        actor.strategy == "megatron"
        and sizes.tensor_parallel > 1
        and (topk or cfg.algo.advantage == "optimal_token_baseline")
    ):
        raise UserError(
            "top-k distillation and algo.advantage=optimal_token_baseline are not built for actor.megatron.tensor_parallel > 1",
            hint="set actor.megatron.tensor_parallel=1, or actor.strategy=fsdp",
        )


def _partial_rollouts(cfg: DictConfig) -> None:
    # trainer/setup.RunContext.sync_weights: a continued rollout takes the weights while it runs,
    # which only happens when generation runs beside the update (async on split pools);
    # trainer/rollout_batch: the per-token versions come from single-turn completions only.
    if cfg.trainer.partial_rollouts != "continue":
        return
    if cfg.trainer.mode != "async" or cfg.hardware.placement != "split":
        raise UserError(
            f"trainer.partial_rollouts=continue needs weights to arrive while rollouts run, but "
            f"trainer.mode={cfg.trainer.mode} with hardware.placement={cfg.hardware.placement} never does",
            hint="set trainer.mode=async and hardware.placement=split (a device of its own for the "
            "rollout engine), or trainer.partial_rollouts=finish",
        )
    if cfg.rollout.multi_turn.enable:
        raise UserError(
            "trainer.partial_rollouts=continue is not built for multi-turn rollouts (rollout.multi_turn.enable)",
            hint="set trainer.partial_rollouts=finish",
        )
    if cfg.hardware.weight_transfer == "collective":
        raise UserError(
            "trainer.partial_rollouts=continue takes the weights through Ray's object store: the "
            "collective's receive would wait behind the running generation it is meant to update",
            hint="set hardware.weight_transfer=object_store (or auto, which picks it), or trainer.partial_rollouts=finish",
        )


def _sft_columns_and_task(cfg: DictConfig) -> None:
    # data/sft_dataset.SFTDataset reads prompt/response pairs only with both keys; trainer/sft_data.
    # write_synthetic_files has reference answers only for the arith task.
    s = cfg.sft
    if (s.prompt_key is None) != (s.response_key is None):
        raise UserError(
            f"sft.prompt_key={s.prompt_key} and sft.response_key={s.response_key}: set both, or neither",
            hint="both read single-turn pairs; neither reads the sft.messages_key column",
        )
    if not cfg.data.train_files and cfg.data.synthetic != "arith":
        raise UserError(
            f"rlkit sft has no reference answers for data.synthetic={cfg.data.synthetic}",
            hint="use data.synthetic=arith, or pass data.train_files with messages or prompt/response columns",
        )


#: The rules each command relies on (``sft`` uses neither mini-batches nor rewards nor profiling windows).
RULES: dict[str, tuple[Callable[[DictConfig], Any], ...]] = {
    "train": (
        _mini_batches,
        _workers,
        _weight_transfer,
        _profile_steps,
        _reference_and_critic,
        _reward,
        _gdpo_and_rollout_correction,
        _bypass,
        _megatron,
        _partial_rollouts,
    ),
    "sft": (_sft_columns_and_task,),
}


def check_rules(cfg: DictConfig, command: str = "train") -> None:
    """Refuse the first rule between keys that ``cfg`` breaks.

    Raises:
        UserError: One line naming the keys, their values and a fix.
    """
    for rule in RULES.get(command, RULES["train"]):
        rule(cfg)
