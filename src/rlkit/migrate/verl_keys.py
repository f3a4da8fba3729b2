"""verl's config keys and their rlkit equivalents: the one table behind ``rlkit migrate verl`` and the
key table of ``docs/coming-from-verl.md`` (``python -m rlkit.migrate.docs`` writes it).

Each :class:`Rule` names a verl key (``a_r_r.`` abbreviates ``actor_rollout_ref.``) and says what
becomes of it: ``map`` (an rlkit key, the value converted by ``convert`` where the meaning differs),
``same`` (rlkit always does this: nothing to set) or ``none`` (no equivalent; the note says why or
what to do instead). verl 0.7's ``reward_model.*`` / ``custom_reward_function.*`` keys and the
``reward.*`` layout of later releases are both read (:func:`canonical`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class NotMapped(Exception):
    """A value of a mapped key that rlkit cannot express (the message says why)."""


@dataclass(frozen=True)
class Rule:
    verl: str
    kind: str  # "map" | "same" | "none"
    rlkit: str = ""
    note: str = ""
    convert: Callable[[Any], list[tuple[str, Any]]] | None = None


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _engine(value: Any) -> list[tuple[str, Any]]:
    name = str(value).lower()
    if name in ("vllm", "hf"):
        return [("rollout.engine", name)]
    raise NotMapped(
        f"rollout engine {value!r} is not supported: rlkit runs native (default), hf, vllm or server"
    )


def _strategy(value: Any) -> list[tuple[str, Any]]:
    name = str(value).lower()
    if name in ("fsdp", "fsdp2"):
        return [("actor.strategy", "fsdp")]
    if name == "megatron":
        return [("actor.strategy", "megatron")]
    raise NotMapped(f"training strategy {value!r} is not supported: rlkit trains with fsdp or megatron")


def _critic_strategy(value: Any) -> list[tuple[str, Any]]:
    return [("critic.strategy", v) for _, v in _strategy(value)]


def _ref_strategy(value: Any) -> list[tuple[str, Any]]:
    return [("ref.strategy", v) for _, v in _strategy(value)]


def _loggers(value: Any) -> list[tuple[str, Any]]:
    names = value if isinstance(value, list) else [value]
    known = [str(n) for n in names if str(n) in ("console", "wandb", "tensorboard")]
    dropped = [str(n) for n in names if str(n) not in known]
    if dropped:
        raise NotMapped(
            f"logger(s) {', '.join(dropped)} are not supported (console, jsonl, tensorboard, wandb, prometheus);"
            f" use trainer.loggers=[{','.join(['console', 'jsonl', *[k for k in known if k != 'console']])}]"
        )
    ordered = ["console", "jsonl", *[k for k in known if k != "console"]]
    return [("trainer.loggers", ordered)]  # jsonl kept: metrics.jsonl feeds rlkit plot and report


def _save_every(value: Any) -> list[tuple[str, Any]]:
    every = int(value)
    if every < 0:
        raise NotMapped(
            "verl's -1 (never save) has no rlkit equivalent: rlkit saves the last step (trainer.save_every=0)"
        )
    return [("trainer.save_every", every)]


def _val_every(value: Any) -> list[tuple[str, Any]]:
    return [("trainer.val_every", max(int(value), 0))]


def _resume(value: Any) -> list[tuple[str, Any]]:
    mode = str(value)
    if mode in ("auto", "disable"):
        return [("trainer.resume", "auto" if mode == "auto" else "never")]
    raise NotMapped(f"resume_mode={mode}: pass the checkpoint as trainer.resume=PATH")


def _clip_both(value: Any) -> list[tuple[str, Any]]:
    return [("actor.clip_ratio_low", value), ("actor.clip_ratio_high", value)]


def _cuda_graphs(value: Any) -> list[tuple[str, Any]]:
    return [("rollout.cuda_graphs", not _bool(value))]


def _free_cache(value: Any) -> list[tuple[str, Any]]:
    return [("rollout.free_cache", "auto" if _bool(value) else "never")]


def _val_sampling(value: Any) -> list[tuple[str, Any]]:
    if _bool(value):
        raise NotMapped("sampled validation: set rollout.val_temperature (0, greedy, is rlkit's default)")
    return [("rollout.val_temperature", 0.0)]


def _schedule(value: Any) -> list[tuple[str, Any]]:
    name = str(value)
    if name in ("constant", "cosine"):
        return [("actor.lr_schedule", name)]
    raise NotMapped(f"learning-rate schedule {name!r}: rlkit has constant and cosine")


def _critic_schedule(value: Any) -> list[tuple[str, Any]]:
    raise NotMapped("the critic's schedule is constant after critic.warmup_steps")


def _filter_metric(value: Any) -> list[tuple[str, Any]]:
    name = {
        "acc": "score",
        "score": "score",
        "seq_reward": "seq_reward",
        "seq_final_reward": "seq_reward",
    }.get(str(value))
    if name is None:
        return [("algo.filter_groups.metric", str(value))]
    return [("algo.filter_groups.metric", name)]


def _tools(value: Any) -> list[tuple[str, Any]]:
    return [("rollout.multi_turn.agent", "tool"), ("rollout.multi_turn.tools", [str(value)])]


TOKEN_BUDGET = "rlkit sizes micro-batches by tokens (actor.micro_batch_tokens, a profile key); the update does not depend on it"
RULES: tuple[Rule, ...] = (
    # ------------------------------------------------------------------ algorithm
    Rule(
        "algorithm.adv_estimator",
        "map",
        "recipe",
        "the recipe: gae is `rlkit train ppo`, grpo `rlkit train grpo`, rloo `rlkit train rloo`, ...; `rlkit recipes` lists them",
    ),
    Rule("algorithm.gamma", "map", "algo.gamma"),
    Rule("algorithm.lam", "map", "algo.lam"),
    Rule(
        "algorithm.norm_adv_by_std_in_grpo",
        "map",
        "algo.norm_adv_by_std_in_grpo",
        "False is Dr. GRPO (`rlkit train drgrpo`)",
    ),
    Rule("algorithm.use_kl_in_reward", "map", "algo.use_kl_in_reward"),
    Rule("algorithm.kl_penalty", "map", "algo.kl_penalty"),
    Rule("algorithm.kl_ctrl.type", "map", "algo.kl_ctrl.type"),
    Rule("algorithm.kl_ctrl.kl_coef", "map", "algo.kl_ctrl.kl_coef", "used with algo.use_kl_in_reward=true"),
    Rule("algorithm.kl_ctrl.target_kl", "map", "algo.kl_ctrl.target_kl"),
    Rule("algorithm.kl_ctrl.horizon", "map", "algo.kl_ctrl.horizon"),
    Rule(
        "algorithm.filter_groups.enable",
        "map",
        "algo.filter_groups.enable",
        "DAPO's dynamic sampling; `rlkit train dapo` turns it on",
    ),
    Rule(
        "algorithm.filter_groups.metric",
        "map",
        "algo.filter_groups.metric",
        "acc and score are `score`, seq_reward and seq_final_reward `seq_reward`",
        _filter_metric,
    ),
    Rule("algorithm.filter_groups.max_num_gen_batches", "map", "algo.filter_groups.max_num_gen_batches"),
    Rule("algorithm.rollout_correction.rollout_is", "map", "algo.rollout_correction.rollout_is"),
    Rule(
        "algorithm.rollout_correction.rollout_is_threshold",
        "map",
        "algo.rollout_correction.rollout_is_threshold",
        "IcePop's lower bound is algo.rollout_correction.rollout_is_threshold_lower",
    ),
    Rule(
        "algorithm.rollout_correction.bypass_mode",
        "map",
        "actor.old_log_probs",
        "true is actor.old_log_probs=rollout (the rollout log-probs as the PPO denominator)",
        lambda value: [("actor.old_log_probs", "rollout" if _bool(value) else "recompute")],
    ),
    Rule(
        "algorithm.rollout_correction.*",
        "none",
        note="rejection sampling and vetoes (rollout_rs, rollout_token_veto_threshold) are not implemented; rlkit has token/sequence IS weights with IcePop bounds",
    ),
    Rule("algorithm.gdpo_reward_keys", "map", "algo.gdpo_reward_keys", "`rlkit train gdpo`"),
    Rule("algorithm.gdpo_reward_weights", "map", "algo.gdpo_reward_weights"),
    Rule(
        "distillation.*",
        "none",
        note="on-policy distillation is `rlkit train distill` with algo.distill.* keys (docs/distill.md); map the teacher by hand",
    ),
    # ------------------------------------------------------------------ data
    Rule("data.train_files", "map", "data.train_files", "lists: data.train_files=[a.parquet,b.parquet]"),
    Rule("data.val_files", "map", "data.val_files"),
    Rule("data.train_batch_size", "map", "data.batch_size", "prompts per step, as in verl"),
    Rule("data.val_batch_size", "map", "data.val_batch_size", "the generation batch of validation"),
    Rule(
        "data.gen_batch_size",
        "none",
        note="DAPO's rounds draw data.batch_size prompts each (at most algo.filter_groups.max_num_gen_batches rounds)",
    ),
    Rule("data.max_prompt_length", "map", "data.max_prompt_length"),
    Rule("data.max_response_length", "map", "data.max_response_length"),
    Rule("data.filter_overlong_prompts", "same", note="always on: longer prompts are dropped and counted"),
    Rule("data.truncation", "none", note="RL prompts are filtered, never truncated (SFT has sft.truncation)"),
    Rule("data.prompt_key", "map", "data.prompt_key"),
    Rule("data.reward_fn_key", "map", "data.reward_fn_key"),
    Rule("data.shuffle", "map", "data.shuffle"),
    Rule("data.seed", "map", "trainer.seed", "one seed for data order, sampling and initialisation"),
    Rule(
        "data.return_raw_chat",
        "same",
        note="the raw chat is always kept (reward models and agent loops read it)",
    ),
    Rule("data.dataloader_num_workers", "same", note="prompts are read in the driver"),
    # ------------------------------------------------------------------ model
    Rule("a_r_r.model.path", "map", "model.path", "a folder or a Hub id"),
    Rule("a_r_r.model.trust_remote_code", "map", "model.trust_remote_code"),
    Rule(
        "a_r_r.model.enable_gradient_checkpointing",
        "map",
        "model.gradient_checkpointing",
        "one switch for actor and critic",
    ),
    Rule(
        "a_r_r.model.use_remove_padding",
        "same",
        note="always on: training runs on packed sequences without padding",
    ),
    Rule(
        "a_r_r.model.use_fused_kernels",
        "same",
        note="always on: log-probs never materialise full-vocabulary fp32 logits",
    ),
    Rule("a_r_r.model.lora_rank", "map", "model.lora_rank"),
    Rule("a_r_r.model.lora_alpha", "map", "model.lora_alpha"),
    Rule("a_r_r.model.target_modules", "map", "model.lora_target_modules"),
    Rule("a_r_r.model.use_shm", "none", note="models load from their folder or the Hugging Face cache"),
    Rule(
        "a_r_r.model.enable_activation_offload",
        "none",
        note="not supported; use model.gradient_checkpointing",
    ),
    Rule(
        "a_r_r.hybrid_engine",
        "same",
        note="colocated actor, rollout and ref are the default (hardware.placement=colocated)",
    ),
    # ------------------------------------------------------------------ actor
    Rule("a_r_r.actor.optim.lr", "map", "actor.lr"),
    Rule("a_r_r.actor.optim.weight_decay", "map", "actor.weight_decay"),
    Rule("a_r_r.actor.optim.betas", "map", "actor.betas"),
    Rule("a_r_r.actor.optim.lr_warmup_steps", "map", "actor.warmup_steps"),
    Rule(
        "a_r_r.actor.optim.lr_warmup_steps_ratio",
        "none",
        note="warm-up is counted in steps: actor.warmup_steps = ratio x trainer.total_steps",
    ),
    Rule("a_r_r.actor.optim.warmup_style", "map", "actor.lr_schedule", "constant or cosine", _schedule),
    Rule("a_r_r.actor.optim.lr_scheduler_type", "map", "actor.lr_schedule", "constant or cosine", _schedule),
    Rule("a_r_r.actor.optim.min_lr_ratio", "map", "actor.min_lr_ratio"),
    Rule("a_r_r.actor.grad_clip", "map", "actor.grad_clip"),
    Rule(
        "a_r_r.actor.ppo_mini_batch_size",
        "map",
        "actor.mini_batch_size",
        "prompts per optimizer step, as in verl",
    ),
    Rule("a_r_r.actor.ppo_epochs", "map", "actor.epochs"),
    Rule("a_r_r.actor.ppo_micro_batch_size", "same", note=TOKEN_BUDGET),
    Rule("a_r_r.actor.ppo_micro_batch_size_per_gpu", "same", note=TOKEN_BUDGET),
    Rule(
        "a_r_r.actor.use_dynamic_bsz", "same", note="always on: micro-batches are packed up to a token budget"
    ),
    Rule(
        "a_r_r.actor.ppo_max_token_len_per_gpu",
        "map",
        "actor.micro_batch_tokens",
        "the token budget of a micro-batch per device",
    ),
    Rule("a_r_r.actor.use_kl_loss", "map", "actor.use_kl_loss"),
    Rule("a_r_r.actor.kl_loss_coef", "map", "actor.kl_loss_coef"),
    Rule("a_r_r.actor.kl_loss_type", "map", "actor.kl_loss_type"),
    Rule("a_r_r.actor.entropy_coeff", "map", "actor.entropy_coeff"),
    Rule(
        "a_r_r.actor.clip_ratio",
        "map",
        "actor.clip_ratio_low",
        "sets actor.clip_ratio_low and actor.clip_ratio_high",
        _clip_both,
    ),
    Rule("a_r_r.actor.clip_ratio_low", "map", "actor.clip_ratio_low"),
    Rule("a_r_r.actor.clip_ratio_high", "map", "actor.clip_ratio_high"),
    Rule("a_r_r.actor.clip_ratio_c", "map", "actor.clip_ratio_c"),
    Rule("a_r_r.actor.loss_agg_mode", "map", "actor.loss_agg_mode"),
    Rule("a_r_r.actor.policy_loss.loss_mode", "map", "actor.loss_mode"),
    Rule("a_r_r.actor.strategy", "map", "actor.strategy", "fsdp / fsdp2 -> fsdp; megatron", _strategy),
    *(
        Rule(f"a_r_r.actor.megatron.{verl}", "map", f"actor.megatron.{ours}", note)
        for verl, ours, note in (
            ("tensor_model_parallel_size", "tensor_parallel", ""),
            ("expert_model_parallel_size", "expert_parallel", ""),
            ("pipeline_model_parallel_size", "pipeline_parallel", ""),
            ("virtual_pipeline_model_parallel_size", "virtual_pipeline", "verl's null is 1"),
            ("context_parallel_size", "context_parallel", "dense models; no transformer-engine needed"),
            ("sequence_parallel", "sequence_parallel", "dense models"),
            ("use_distributed_optimizer", "distributed_optimizer", "rlkit's ZeRO-1 over the DP replicas"),
        )
    ),
    Rule("a_r_r.actor.fsdp_config.param_offload", "map", "actor.param_offload"),
    Rule("a_r_r.actor.fsdp_config.optimizer_offload", "map", "actor.optimizer_offload"),
    Rule(
        "a_r_r.actor.fsdp_config.grad_offload",
        "none",
        note="actor.param_offload keeps gradients on the CPU too",
    ),
    Rule("a_r_r.actor.fsdp_config.fsdp_size", "none", note="FSDP shards over every device of the run"),
    Rule(
        "a_r_r.actor.ulysses_sequence_parallel_size",
        "none",
        note="FSDP has no sequence parallelism: use actor.strategy=megatron with actor.megatron.context_parallel",
    ),
    Rule(
        "a_r_r.actor.checkpoint.*",
        "none",
        note="checkpoints always hold the model, optimizer and RNG (see docs/checkpoints.md)",
    ),
    # ------------------------------------------------------------------ rollout
    Rule(
        "a_r_r.rollout.name",
        "map",
        "rollout.engine",
        "vllm and hf map; SGLang is not supported (native, rlkit's own engine, is the default)",
        _engine,
    ),
    Rule("a_r_r.rollout.n", "map", "rollout.n"),
    Rule("a_r_r.rollout.temperature", "map", "rollout.temperature"),
    Rule("a_r_r.rollout.top_p", "map", "rollout.top_p"),
    Rule("a_r_r.rollout.top_k", "map", "rollout.top_k"),
    Rule(
        "a_r_r.rollout.gpu_memory_utilization",
        "map",
        "rollout.gpu_memory_utilization",
        "native engine: the share of the memory free at allocation that the KV cache takes; vllm engine: vLLM's meaning, as in verl",
    ),
    Rule("a_r_r.rollout.max_num_seqs", "map", "rollout.max_num_seqs"),
    Rule(
        "a_r_r.rollout.enforce_eager",
        "map",
        "rollout.cuda_graphs",
        "inverted: enforce_eager=True is rollout.cuda_graphs=false",
        _cuda_graphs,
    ),
    Rule("a_r_r.rollout.val_kwargs.temperature", "map", "rollout.val_temperature"),
    Rule("a_r_r.rollout.val_kwargs.n", "map", "rollout.val_n"),
    Rule(
        "a_r_r.rollout.val_kwargs.do_sample",
        "map",
        "rollout.val_temperature",
        "False is greedy: rollout.val_temperature=0",
        _val_sampling,
    ),
    Rule(
        "a_r_r.rollout.tensor_model_parallel_size",
        "none",
        note="each rollout worker holds the whole model; no tensor parallelism",
    ),
    Rule("a_r_r.rollout.log_prob_micro_batch_size", "same", note=TOKEN_BUDGET),
    Rule("a_r_r.rollout.log_prob_micro_batch_size_per_gpu", "same", note=TOKEN_BUDGET),
    Rule("a_r_r.rollout.log_prob_use_dynamic_bsz", "same", note="always on"),
    Rule(
        "a_r_r.rollout.log_prob_max_token_len_per_gpu",
        "same",
        note="log-prob passes use actor.micro_batch_tokens",
    ),
    Rule(
        "a_r_r.rollout.calculate_log_probs",
        "same",
        note="rollout log-probs are always kept (rollout/logprob_gap_abs)",
    ),
    Rule(
        "a_r_r.rollout.load_format", "same", note="colocated, the engine takes the actor's weights in-process"
    ),
    Rule(
        "a_r_r.rollout.layered_summon",
        "same",
        note="colocated, the engine takes the actor's weights in-process",
    ),
    Rule(
        "a_r_r.rollout.free_cache_engine",
        "map",
        "rollout.free_cache",
        "true is auto: freed while the update needs the room, kept when both fit",
        _free_cache,
    ),
    Rule("a_r_r.rollout.multi_stage_wake_up", "same", note="the engine wakes weights, then the KV cache"),
    Rule(
        "a_r_r.rollout.mode",
        "none",
        note="the rollout runs in the worker; async trajectories come with the agent loops",
    ),
    Rule(
        "a_r_r.rollout.over_sample_rate",
        "none",
        note="no over-sampling; DAPO's dynamic sampling draws more rounds instead",
    ),
    Rule(
        "a_r_r.rollout.max_num_batched_tokens", "none", note="the native engine sizes prefill chunks itself"
    ),
    Rule("a_r_r.rollout.multi_turn.enable", "map", "rollout.multi_turn.enable"),
    Rule("a_r_r.rollout.multi_turn.max_assistant_turns", "map", "rollout.multi_turn.max_turns"),
    Rule(
        "a_r_r.rollout.multi_turn.tool_config_path",
        "map",
        "rollout.multi_turn.tools",
        "the verl tools YAML, with rollout.multi_turn.agent=tool",
        _tools,
    ),
    Rule(
        "a_r_r.rollout.multi_turn.interaction_config_path",
        "map",
        "rollout.multi_turn.interaction_config_path",
    ),
    Rule(
        "a_r_r.rollout.multi_turn.max_tool_response_length",
        "map",
        "rollout.multi_turn.max_tool_response_length",
    ),
    Rule("a_r_r.rollout.multi_turn.tool_response_truncate_side", "map", "rollout.multi_turn.truncation_side"),
    Rule("a_r_r.rollout.multi_turn.max_parallel_calls", "map", "rollout.multi_turn.max_parallel_calls"),
    Rule("a_r_r.rollout.multi_turn.format", "map", "rollout.multi_turn.parser"),
    # ------------------------------------------------------------------ ref
    Rule("a_r_r.ref.strategy", "map", "ref.strategy", "fsdp / fsdp2 -> fsdp; megatron", _ref_strategy),
    Rule("a_r_r.ref.fsdp_config.param_offload", "map", "ref.param_offload"),
    Rule("a_r_r.ref.log_prob_micro_batch_size", "same", note=TOKEN_BUDGET),
    Rule("a_r_r.ref.log_prob_micro_batch_size_per_gpu", "same", note=TOKEN_BUDGET),
    Rule("a_r_r.ref.log_prob_use_dynamic_bsz", "same", note="always on"),
    Rule(
        "a_r_r.ref.log_prob_max_token_len_per_gpu", "same", note="the reference uses actor.micro_batch_tokens"
    ),
    # ------------------------------------------------------------------ critic
    Rule("critic.optim.lr", "map", "critic.lr"),
    Rule("critic.optim.lr_warmup_steps", "map", "critic.warmup_steps"),
    Rule(
        "critic.optim.lr_warmup_steps_ratio", "none", note="warm-up is counted in steps: critic.warmup_steps"
    ),
    Rule(
        "critic.optim.warmup_style", "map", "critic.warmup_steps", "constant after warm-up", _critic_schedule
    ),
    Rule("critic.model.path", "map", "critic.model_path", "defaults to model.path"),
    Rule(
        "critic.strategy",
        "map",
        "critic.strategy",
        "fsdp / fsdp2 -> fsdp; megatron (sizes: actor.megatron.*)",
        _critic_strategy,
    ),
    Rule("critic.model.use_remove_padding", "same", note="always on"),
    Rule(
        "critic.model.enable_gradient_checkpointing",
        "map",
        "model.gradient_checkpointing",
        "one switch for actor and critic",
    ),
    Rule("critic.model.fsdp_config.param_offload", "map", "critic.param_offload"),
    Rule(
        "critic.model.fsdp_config.optimizer_offload", "none", note="critic.param_offload offloads the critic"
    ),
    Rule("critic.ppo_micro_batch_size", "same", note=TOKEN_BUDGET),
    Rule("critic.ppo_micro_batch_size_per_gpu", "same", note=TOKEN_BUDGET),
    Rule("critic.ppo_max_token_len_per_gpu", "map", "critic.micro_batch_tokens"),
    Rule("critic.use_dynamic_bsz", "same", note="always on"),
    Rule("critic.cliprange_value", "map", "critic.cliprange_value"),
    Rule("critic.grad_clip", "map", "critic.grad_clip"),
    Rule(
        "critic.ppo_mini_batch_size",
        "none",
        note="the critic updates on the actor's mini-batches (actor.mini_batch_size)",
    ),
    # ------------------------------------------------------------------ reward
    Rule("reward_model.enable", "same", note="a reward model is used when reward.model_path is set"),
    Rule("reward_model.model.path", "map", "reward.model_path", "a sequence-classification model"),
    Rule("reward_model.reward_manager", "map", "reward.manager", "naive, batch or dapo"),
    Rule("reward_model.overlong_buffer.enable", "map", "reward.overlong.enable"),
    Rule("reward_model.overlong_buffer.len", "map", "reward.overlong.buffer_len"),
    Rule("reward_model.overlong_buffer.penalty_factor", "map", "reward.overlong.penalty_factor"),
    Rule("reward_model.micro_batch_size_per_gpu", "same", note="the reward model scores by shards"),
    Rule(
        "reward_model.launch_reward_fn_async",
        "same",
        note="rule rewards run in sandboxed worker processes (reward.num_workers)",
    ),
    Rule("reward_manager.name", "map", "reward.manager", "naive, batch or dapo"),
    Rule("custom_reward_function.path", "map", "reward.custom.path", "verl's compute_score signature"),
    Rule("custom_reward_function.name", "map", "reward.custom.name"),
    # ------------------------------------------------------------------ trainer
    Rule(
        "trainer.logger",
        "map",
        "trainer.loggers",
        "jsonl is kept: metrics.jsonl feeds rlkit plot and rlkit report",
        _loggers,
    ),
    Rule("trainer.project_name", "map", "trainer.project"),
    Rule("trainer.experiment_name", "map", "trainer.experiment"),
    Rule("trainer.n_gpus_per_node", "map", "hardware.devices_per_node", "usually set by --profile"),
    Rule("trainer.nnodes", "map", "hardware.nodes", "usually set by --profile"),
    Rule("trainer.device", "map", "hardware.device"),
    Rule(
        "trainer.save_freq",
        "map",
        "trainer.save_every",
        "0 saves at the end only; verl's -1 (never) has no equivalent",
        _save_every,
    ),
    Rule("trainer.test_freq", "map", "trainer.val_every", "0 = never", _val_every),
    Rule("trainer.val_before_train", "map", "trainer.val_before_train"),
    Rule("trainer.total_training_steps", "map", "trainer.total_steps"),
    Rule(
        "trainer.total_epochs",
        "none",
        note="rlkit counts steps: trainer.total_steps = epochs x train prompts / data.batch_size",
    ),
    Rule("trainer.critic_warmup", "map", "trainer.critic_warmup"),
    Rule("trainer.resume_mode", "map", "trainer.resume", "auto is auto, disable is never", _resume),
    Rule("trainer.resume_from_path", "map", "trainer.resume", "a checkpoint folder RUN/checkpoints/step_N"),
    Rule("trainer.default_local_dir", "map", "trainer.out_dir"),
    Rule("trainer.max_actor_ckpt_to_keep", "map", "trainer.keep_last"),
    Rule("trainer.default_hdfs_dir", "none", note="checkpoints stay in the run folder"),
    Rule(
        "trainer.log_val_generations",
        "none",
        note="rlkit report shows sample traces of every step (trainer.trace_every)",
    ),
    Rule("trainer.balance_batch", "same", note="micro-batches are packed by tokens"),
    Rule("trainer.use_legacy_worker_impl", "none", note="rlkit has one worker implementation"),
    Rule("trainer.val_only", "none", note="no validation-only mode; rlkit generate runs a model on prompts"),
    Rule(
        "global_profiler.*",
        "none",
        note="rlkit profile --torch|--nsight|--npu train RECIPE (docs/profiling.md)",
    ),
    Rule("ray_kwargs.*", "none", note="hardware.ray_address joins an existing Ray cluster"),
)

_ABBREV = "a_r_r."
_FULL = "actor_rollout_ref."


def expand(key: str) -> str:
    """``a_r_r.x`` -> ``actor_rollout_ref.x``."""
    return _FULL + key[len(_ABBREV) :] if key.startswith(_ABBREV) else key


def canonical(key: str) -> str:
    """A verl key in the layout :data:`RULES` uses: later releases' ``reward.*`` keys become the
    0.7 names (``reward.custom_reward_function.path`` -> ``custom_reward_function.path``,
    ``reward.reward_manager.name`` -> ``reward_manager.name``, ``reward.X`` -> ``reward_model.X``)."""
    key = key.lstrip("+~")
    if key.startswith("reward.custom_reward_function."):
        return key[len("reward.") :]
    if key.startswith("reward.reward_manager."):
        return key[len("reward.") :]
    if key.startswith("reward.reward_model."):
        return "reward_model." + key[len("reward.reward_model.") :]
    if key.startswith("reward."):
        return "reward_model." + key[len("reward.") :]
    return key


_EXACT = {expand(r.verl): r for r in RULES if not r.verl.endswith(".*")}
_PREFIXES = [(expand(r.verl)[:-1], r) for r in RULES if r.verl.endswith(".*")]


def rule_for(key: str) -> Rule | None:
    """The rule of a verl key (full or ``reward.*`` layout), or None when the table has none."""
    key = canonical(key)
    if key in _EXACT:
        return _EXACT[key]
    for prefix, rule in _PREFIXES:
        if key.startswith(prefix):
            return rule
    return None
