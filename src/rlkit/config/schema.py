"""The config schema: the one source of truth for every key, its type, default and meaning.

Recipes (``recipes/*.yaml``), profiles (``profiles/*.yaml``), ``--config`` files and ``KEY=VALUE``
overrides only set values of these fields. Each field's docstring (the string under it) is its
documentation: ``rlkit config --explain`` and ``docs/config.md`` are generated from them.

Fields created with :func:`~rlkit.config.keys.profile_key` are the hardware, parallelism, batch and memory keys that a
hardware profile may set; a profile that sets any other key is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlkit.config.keys import bounded, choice, choice_list, profile_key, unbounded
from rlkit.config.rollout_schema import RolloutConfig


@dataclass
class ModelConfig:
    path: str = "builtin:tiny-arith"
    """Hugging Face folder or hub id of the policy, or a built-in model: ``builtin:tiny-arith`` (the
    embedded default's warm start, shipped with rlkit) or ``builtin:tiny`` (random init)."""
    tokenizer: str | None = None
    """Tokenizer folder or hub id; defaults to ``model.path``."""
    dtype: str = choice("auto", "bfloat16", "float32", profile=True)
    """Compute dtype: ``auto`` (bfloat16 on GPU, float32 on CPU), ``bfloat16`` or ``float32``."""
    gradient_checkpointing: bool | None = profile_key(False)
    """Recompute activations in the backward pass to save memory. ``null`` (the one-GPU profiles'
    value): an RL run turns it off where ``rlkit plan``'s estimate of the actor's update without it
    fits in 75% of ``hardware.memory_per_device_gb``, and on otherwise (a 0.5B model on an H200: off,
    1.5B and up: on; on for the Megatron engine and for architectures rlkit's decoder does not run,
    which the estimate does not model); the run's config.yaml records the choice. SFT: on where the profile names the
    device's memory, else off."""
    torch_compile: bool = profile_key(True)
    """On accelerators, compile each decoder layer of the trained and reference models with
    ``torch.compile``: fewer, fused kernels (1.1x to 1.7x the update throughput of a 0.5B model on
    one H200, see docs/performance.md), for 10-15 s of compilation at the first step. Ignored on
    the CPU."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the model folder (non-native architectures only)."""
    lora_rank: int = bounded(0, ge=0)
    """LoRA rank; 0 trains all weights."""
    lora_alpha: int = bounded(16, gt=0)
    """LoRA scaling numerator (scale = alpha / rank)."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get LoRA adapters (``all-linear`` or module names such as ``q_proj``)."""


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)
    """Parquet files of training prompts (verl schema); empty = the synthetic task ``data.synthetic``."""
    val_files: list[str] = field(default_factory=list)
    """Parquet files of validation prompts; empty = a held-out split of the synthetic task when it is used."""
    synthetic: str = choice("arith", "countdown", "arith_tools")
    """Task generated on the fly when ``data.train_files`` is empty (``arith``, ``countdown``, or ``arith_tools``: products to solve with the calculator tool)."""
    synthetic_size: int = bounded(4096, ge=1)
    """Number of synthetic training prompts (validation gets an eighth of it)."""
    batch_size: int = bounded(16, ge=1, profile=True)
    """Prompts per RL step (each gets ``rollout.n`` samples)."""
    val_batch_size: int = bounded(64, ge=1, profile=True)
    """Prompts per validation generation batch."""
    max_prompt_length: int = bounded(512, ge=1)
    """Prompts longer than this many tokens are filtered out (and counted)."""
    max_response_length: int = bounded(512, ge=1)
    """Maximum generated tokens per response."""
    prompt_key: str = "prompt"
    """Column that holds the chat messages of a prompt."""
    reward_fn_key: str = "data_source"
    """Column that selects the scorer of a row."""
    shuffle: bool = True
    """Shuffle the training prompts each epoch (seeded by ``trainer.seed``)."""
    chat_template: bool | None = None
    """Render prompts (and SFT conversations) with the tokenizer's chat template: true, false (plain
    text), or null (the default: when the tokenizer has one)."""
    reference_key: str | None = None
    """Key of ``extra_info`` holding each prompt's reference response (SPIN); null = ``reward_model.ground_truth``."""


@dataclass
class MegatronConfig:
    """Megatron-core's parallel sizes (``actor.strategy`` / ``critic.strategy`` = ``megatron``; see docs/megatron.md).

    The data-parallel size is what the training world (``hardware.nodes x devices_per_node``,
    less ``rollout_devices`` when split) leaves over ``tensor_parallel x pipeline_parallel x
    context_parallel``; micro-batches are cut by token budget (``actor.micro_batch_tokens``), as on FSDP.
    """

    tensor_parallel: int = bounded(1, ge=1, profile=True)
    """Tensor-parallel size: each linear layer and the vocabulary split over this many devices
    (must divide the world, the attention and key/value heads and the vocabulary)."""
    expert_parallel: int = bounded(1, ge=1, profile=True)
    """Expert-parallel size of a mixture-of-experts model (Qwen3-MoE): each device holds
    ``num_experts / expert_parallel`` experts (must divide the world and the experts)."""
    pipeline_parallel: int = bounded(1, ge=1, profile=True)
    """Pipeline stages: each holds an equal run of the layers (must divide the layers and, times
    ``tensor_parallel``, the world); the micro-batches of a pass run through Megatron's 1F1B schedule."""
    virtual_pipeline: int = bounded(1, ge=1, profile=True)
    """Model chunks per pipeline stage (Megatron's interleaved schedule: a smaller pipeline bubble);
    needs ``pipeline_parallel > 1``, and ``pipeline_parallel x virtual_pipeline`` must divide the layers."""
    context_parallel: int = bounded(1, ge=1, profile=True)
    """Context-parallel size: each sequence split over this many devices (two load-balanced chunks
    each, keys and values gathered in attention), for long sequences; dense models only.
    ``tensor_parallel x pipeline_parallel x context_parallel`` must divide the world."""
    sequence_parallel: bool = profile_key(False)
    """Megatron's sequence parallelism: the norms and residual stream between the TP layers cut
    over the ``tensor_parallel`` ranks by sequence (less activation memory); needs
    ``tensor_parallel > 1``; dense models only."""
    distributed_optimizer: bool = profile_key(False)
    """Shard the AdamW states over the data-parallel replicas (ZeRO-1, as Megatron's distributed
    optimizer): each replica steps its share of the weights and broadcasts them to the others, so a
    device holds ``1 / data parallel`` of the 8 bytes per weight of Adam moments."""


@dataclass
class ActorConfig:
    strategy: str = choice("fsdp", "megatron", profile=True)
    """Training engine of the actor: ``fsdp`` (PyTorch FSDP2) or ``megatron`` (Megatron-core
    ``GPTModel`` with tensor, pipeline, context and expert parallelism; needs ``pip install
    "rlkit[megatron]"`` and a CUDA device; see docs/megatron.md). The reference has
    ``ref.strategy``, the critic ``critic.strategy``."""
    megatron: MegatronConfig = field(default_factory=MegatronConfig)
    """Megatron-core parallel sizes of the run (``actor.strategy`` or ``critic.strategy`` = ``megatron``)."""
    lr: float = bounded(1e-6, gt=0)
    """Peak learning rate of AdamW."""
    weight_decay: float = bounded(0.01, ge=0)
    """AdamW weight decay."""
    betas: list[float] = bounded([0.9, 0.999], ge=0, lt=1)
    """AdamW betas."""
    warmup_steps: int = bounded(0, ge=0)
    """Linear learning-rate warmup steps."""
    lr_schedule: str = choice("constant", "cosine")
    """Learning-rate schedule after warmup: ``constant`` or ``cosine``."""
    min_lr_ratio: float = bounded(0.0, ge=0, le=1)
    """Final learning rate of the cosine schedule, as a fraction of ``lr``."""
    grad_clip: float = bounded(1.0, ge=0)
    """Clip gradients to this global norm (0 = no clipping; the norm is still logged)."""
    mini_batch_size: int = bounded(16, ge=1)
    """Prompts per optimizer step (a multiple dividing ``data.batch_size``)."""
    epochs: int = bounded(1, ge=1)
    """Passes over each RL batch."""
    old_log_probs: str = choice("auto", "recompute", "rollout")
    """The PPO ratio's denominator: ``recompute`` (a trainer forward pass before the update, verl's
    default), ``rollout`` (the rollout engine's log-probs of the sampled tokens, verl's rollout
    correction bypass mode: no extra forward pass; exact where the engine computes in the trainer's
    precision, as on CPU in fp32; the rollout/trainer gap metrics, which that pass computes, are
    then not logged, and ``actor/entropy`` comes from the update's forward pass) or ``auto``:
    where the update is one on-policy pass (``trainer.mode=sync``, ``actor.mini_batch_size`` equal
    to ``data.batch_size``, one epoch) and nothing before it reads them, the update's own forward
    pass, detached (the ratio is exactly 1, the same update without the extra pass; the gap
    metrics and ``actor/entropy`` come from that pass); ``recompute`` otherwise."""
    micro_batch_tokens: int = bounded(8192, ge=1, profile=True)
    """Token budget of a micro-batch per device (memory knob; the update is the same for any value)."""
    loss_mode: str = choice(
        "vanilla",
        "gspo",
        "gpg",
        "clip_cov",
        "kl_cov",
        "geo_mean",
        "cispo",
        "sapo",
        "reinforce",
        "sppo",
        "dppo_tv",
        "dppo_kl",
    )
    """Policy loss: vanilla, gspo, gpg, clip_cov, kl_cov, geo_mean, cispo, sapo, reinforce, sppo, dppo_tv,
    dppo_kl (DPPO: ``clip_ratio_low``/``clip_ratio_high`` are then divergence thresholds, e.g. 0.15 / 0.05)."""
    loss_agg_mode: str = choice(
        "token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
    )
    """Loss aggregation: token-mean, token-sum, seq-mean-token-sum, seq-mean-token-mean,
    seq-mean-token-sum-norm."""
    clip_ratio_low: float = bounded(0.2, ge=0)
    """Lower PPO clip range (1 - low)."""
    clip_ratio_high: float = bounded(0.2, ge=0)
    """Upper PPO clip range (1 + high); DAPO's clip-higher raises it."""
    clip_ratio_c: float = bounded(3.0, gt=1)
    """Dual-clip constant for negative advantages (> 1)."""
    entropy_coeff: float = unbounded(0.0, "a negative weight penalises entropy instead of rewarding it")
    """Weight of the entropy bonus."""
    use_kl_loss: bool = False
    """Add a KL-to-reference term to the actor loss (GRPO style)."""
    kl_loss_coef: float = bounded(0.001, ge=0)
    """Weight of the KL loss."""
    kl_loss_type: str = "low_var_kl"
    """KL estimator of the loss: kl, abs, mse, low_var_kl (k1, k2, k3, with optional ``+``)."""
    sppo_eta: float = bounded(1.0, gt=0)
    """SPPO's eta: the ``sppo`` loss regresses each log-ratio onto eta times the centred reward."""
    dpo_beta: float = bounded(0.1, gt=0)
    """Inverse temperature beta of SPIN's DPO pair loss."""
    dpo_loss_type: str = choice("sigmoid", "ipo")
    """SPIN's pair loss: ``sigmoid`` (DPO) or ``ipo``."""
    param_offload: bool = profile_key(False)
    """Keep parameters on the CPU between uses (FSDP2 CPU offload)."""
    optimizer_offload: bool = profile_key(False)
    """Keep optimizer state on the CPU."""


@dataclass
class CriticConfig:
    enable: bool | None = None
    """Train a value model; ``null`` = only when ``algo.advantage`` is ``gae``."""
    model_path: str | None = None
    """Critic initial weights; defaults to ``model.path``."""
    strategy: str = choice("fsdp", "megatron", profile=True)
    """Training engine of the critic: ``fsdp`` or ``megatron`` (Megatron-core with the sizes of
    ``actor.megatron.*``: one Megatron layout per process, which the colocated actor shares)."""
    lr: float = bounded(1e-5, gt=0)
    """Peak learning rate of the critic."""
    warmup_steps: int = bounded(0, ge=0)
    """Critic learning-rate warmup steps."""
    grad_clip: float = bounded(1.0, ge=0)
    """Clip critic gradients to this global norm (0 = no clipping)."""
    cliprange_value: float = bounded(0.5, ge=0)
    """Value clipping range around the old values."""
    micro_batch_tokens: int = bounded(8192, ge=1, profile=True)
    """Token budget of a critic micro-batch per device."""
    param_offload: bool = profile_key(False)
    """Keep critic parameters on the CPU between uses."""


@dataclass
class RefConfig:
    enable: bool | None = None
    """Load a reference model; null = only when a KL term needs one (actor.use_kl_loss, algo.use_kl_in_reward)."""
    param_offload: bool = profile_key(False)
    """Keep reference-model parameters on the CPU between uses."""
    update_every: int = bounded(0, ge=0)
    """Copy the actor into the reference model every N steps (SPIN); 0 = never."""
    strategy: str = choice("fsdp", "megatron", profile=True)
    """The reference model's engine: ``fsdp`` (FSDP2 shards in the compute dtype) or ``megatron``
    (Megatron-core with the sizes of ``actor.megatron.*``, which a process's roles share)."""


@dataclass
class KLControlConfig:
    type: str = choice("fixed", "adaptive")
    """KL coefficient controller: ``fixed`` or ``adaptive``."""
    kl_coef: float = bounded(0.001, ge=0)
    """(Initial) KL coefficient."""
    target_kl: float = bounded(0.1, gt=0)
    """Target KL of the adaptive controller."""
    horizon: int = bounded(10000, ge=1)
    """Horizon of the adaptive controller."""


@dataclass
class FilterGroupsConfig:
    enable: bool = False
    """Dynamic sampling: drop groups whose samples all scored the same and generate more."""
    metric: str = "score"
    """Per-sample value whose spread within a group decides if the group is kept: ``score`` (the scorer's,
    before overlong shaping), ``seq_reward`` (after it), or the name of another batch column."""
    max_num_gen_batches: int = bounded(10, ge=0)
    """Most generation rounds per step (0 = unlimited)."""


@dataclass
class RolloutCorrectionConfig:
    rollout_is: str = choice("auto", "none", "token", "sequence")
    """Rollout IS weights ``pi_train / pi_rollout`` on the policy loss: none, token or sequence level;
    ``auto``: ``token`` when ``trainer.mode`` is ``one_step_off`` or ``async`` and the old log-probs
    are recomputed (the rollouts come from older weights), else ``none``."""
    rollout_is_threshold: float = bounded(2.0, gt=0)
    """Upper bound of the IS weights (TIS truncates at it; IcePop zeroes weights above it)."""
    rollout_is_threshold_lower: float | None = bounded(None, gt=0)
    """IcePop's lower bound: weights outside ``[lower, rollout_is_threshold]`` become 0 (null: TIS)."""


@dataclass
class DistillConfig:
    teachers: list[str] = field(default_factory=list)
    """Teacher models of on-policy distillation (model folders, hub ids or ``builtin:`` names), each
    optionally ``name=path``; empty: no distillation. Rows pick one by ``algo.distill.teacher_key``."""
    teacher_key: str = "teacher"
    """Data column naming each row's teacher (a ``teachers`` name; missing or empty: the first)."""
    loss: str = choice("pg_reverse_kl", "forward_kl", "reverse_kl", "jsd")
    """``pg_reverse_kl``: ``log pi_teacher - log pi_student`` of each sampled token added to the advantages
    (policy-gradient form); ``forward_kl`` / ``reverse_kl`` / ``jsd``: GKD divergence over the teacher's
    top-k added to the actor loss."""
    coef: float = bounded(1.0, ge=0)
    """Weight of the distillation term (per-token advantage or GKD loss)."""
    task_coef: float = bounded(1.0, ge=0)
    """Weight of the task reward's advantages next to the distillation term (0: distillation only)."""
    topk: int = bounded(32, ge=1)
    """Teacher log-probs kept per position (the GKD support)."""
    beta: float = bounded(0.5, ge=0, le=1)
    """Generalised JSD's beta (0: forward KL, 1: reverse KL)."""
    advantage_clip: float | None = bounded(None, gt=0)
    """Bound on ``|log pi_teacher - log pi_student|`` in the ``pg_reverse_kl`` advantage (null: none)."""


@dataclass
class AlgoConfig:
    advantage: str = choice(
        "grpo",
        "gae",
        "rloo",
        "reinforce_plus_plus",
        "reinforce_plus_plus_baseline",
        "remax",
        "opo",
        "gpg",
        "grpo_passk",
        "sppo",
        "gdpo",
        "optimal_token_baseline",
    )
    """Advantage estimator: gae, grpo, rloo, reinforce_plus_plus, reinforce_plus_plus_baseline, remax, opo,
    gpg, grpo_passk, sppo, gdpo (per-component group normalisation of ``algo.gdpo_reward_keys``),
    optimal_token_baseline (OTB: a per-position baseline weighted by each path's gradient variance)."""
    gdpo_reward_keys: list[str] = field(default_factory=list)
    """GDPO's reward components: keys of the dicts ``compute_score`` returns (empty: the one summed score)."""
    gdpo_reward_weights: list[float] | None = unbounded(None, "any real weight, negative ones included")
    """GDPO's weight of each component (null: 1 each); one per ``algo.gdpo_reward_keys`` entry."""
    gamma: float = bounded(1.0, ge=0, le=1)
    """Discount factor."""
    lam: float = bounded(1.0, ge=0, le=1)
    """GAE lambda."""
    norm_adv_by_std_in_grpo: bool = True
    """Divide GRPO advantages by the group's std (false = Dr.GRPO)."""
    sppo_beta: float = bounded(1.0, ge=0)
    """Soft-mean temperature of SPPO's reward centring within a group (0 = plain mean)."""
    use_kl_in_reward: bool = False
    """Subtract a KL penalty against the reference model from the token rewards."""
    kl_penalty: str = "kl"
    """KL estimator of the in-reward penalty."""
    kl_ctrl: KLControlConfig = field(default_factory=KLControlConfig)
    """KL coefficient controller of the in-reward penalty."""
    filter_groups: FilterGroupsConfig = field(default_factory=FilterGroupsConfig)
    """Dynamic sampling (DAPO)."""
    rollout_correction: RolloutCorrectionConfig = field(default_factory=lambda: RolloutCorrectionConfig())
    """Importance weights between the rollout engine's and the trainer's log-probs (TIS, IcePop)."""
    distill: DistillConfig = field(default_factory=lambda: DistillConfig())
    """On-policy distillation from frozen teacher models."""


@dataclass
class CustomRewardConfig:
    path: str | None = None
    """Python file defining a verl-style ``compute_score(data_source, solution_str, ground_truth,
    extra_info)``."""
    name: str = "compute_score"
    """Name of the function in ``reward.custom.path``."""


@dataclass
class OverlongConfig:
    enable: bool = False
    """DAPO overlong reward shaping."""
    buffer_len: int = bounded(16, ge=1)
    """Length of the soft-penalty buffer before ``data.max_response_length``."""
    penalty_factor: float = bounded(1.0, ge=0)
    """Penalty at the full length."""


@dataclass
class RewardConfig:
    manager: str = choice("naive", "batch", "dapo")
    """Reward manager: ``naive`` (per sample), ``batch`` or ``dapo``."""
    custom: CustomRewardConfig = field(default_factory=CustomRewardConfig)
    """A user's scoring function."""
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    """Overlong shaping of the ``dapo`` manager."""
    num_workers: int = bounded(0, ge=0, profile=True)
    """Scoring processes (0 = score built-in rules in the trainer process; custom code always runs in
    sandboxed workers: with 0, one per core, at most 4)."""
    timeout_s: float = bounded(10.0, gt=0)
    """Per-sample scoring timeout (samples time out in parallel across the scoring processes); a timeout
    scores 0 and is counted."""
    step_timeout_s: float = bounded(600.0, gt=0)
    """Wall-clock budget of one step's scoring in worker processes; samples not scored by then are
    timeouts (scored 0, counted) and the busy processes are killed and replaced."""
    import_timeout_s: float = bounded(60.0, gt=0)
    """Seconds a scoring process may take to import ``reward.custom.path``; a file that hangs at import
    stops the run before the first step, naming the line it hangs at."""
    on_error: str = choice("zero", "raise")
    """A sample whose scoring fails (raises, times out, returns NaN/inf, a string or a non-number):
    ``zero`` scores it 0, counts it in ``reward/errors*`` and prints one line for the step; ``raise``
    stops the run naming the data source, the sample index and what came back."""
    model_path: str | None = None
    """A sequence-classification reward model (Hugging Face folder, num_labels=1) that scores responses
    instead of rules; it runs as a worker role on each device."""


@dataclass
class TrainerConfig:
    total_steps: int = bounded(60, ge=1)
    """RL steps to run."""
    out_dir: str | None = None
    """Run folder: config.yaml, metrics.jsonl, checkpoints/. Null (the default): a fresh
    ``runs/<recipe>/<YYYYmmdd-HHMMSS>`` per run, with ``runs/<recipe>/latest`` pointing at it. A
    folder another live run holds is refused (``RUN/.lock``)."""
    save_every: int = bounded(0, ge=0)
    """Save a checkpoint every N steps (0 = only at the end)."""
    val_every: int = bounded(10, ge=0)
    """Validate every N steps (0 = never)."""
    val_before_train: bool = True
    """Validate once before the first step."""
    seed: int = bounded(1, ge=0)
    """Seed of data order, sampling and initialisation."""
    resume: str = "auto"
    """``auto`` (continue the newest checkpoint of ``trainer.out_dir`` when it is set and has one,
    else start fresh), ``latest`` (continue the newest run of this recipe, ``runs/<recipe>/latest``,
    in its folder; or with ``trainer.out_dir`` its newest checkpoint, which must exist), ``never``
    (start fresh), or a PATH: a checkpoint ``RUN/checkpoints/step_N`` or a run folder."""
    keep_last: int | None = bounded(None, ge=0)
    """Checkpoints to keep (0 = all). Null: 3 for a new run; on resume, the value the run started
    with (kept in its checkpoints)."""
    loggers: list[str] = choice_list(
        ["console", "jsonl"], ("console", "jsonl", "tensorboard", "wandb", "prometheus")
    )
    """Where metrics go: console, jsonl, tensorboard, wandb, prometheus (a live ``/metrics``
    endpoint on ``trainer.prometheus_port``; needs ``pip install 'rlkit[prometheus]'``)."""
    prometheus_port: int = bounded(9464, ge=0, le=65535)
    """Port of the ``prometheus`` logger's HTTP endpoint (``/metrics``); 0 = any free port (printed)."""
    prometheus_host: str = "127.0.0.1"
    """Address the ``prometheus`` logger listens on (loopback; ``0.0.0.0`` to let another host scrape it)."""
    log_every: int | None = bounded(None, ge=1)
    """Print a console line every N steps (the first and last step always; ``metrics.jsonl``
    keeps every step). Null: every step up to 50 steps, else every ``ceil(total_steps / 40)``
    (about 40 lines per run)."""
    project: str = "rlkit"
    """Project name (wandb, tensorboard)."""
    experiment: str = "${recipe}"
    """Experiment name (wandb, tensorboard)."""
    critic_warmup: int = bounded(0, ge=0)
    """Steps that update only the critic."""
    mode: str = choice("sync", "one_step_off", "async")
    """How rollouts are scheduled against updates (docs/async.md): ``sync`` (each step's rollouts
    come from the weights it trains), ``one_step_off`` (the rollouts of step t+1 are generated before
    step t's update, one policy version behind), ``async`` (up to ``trainer.rollout_queue_size``
    batches generated ahead, at most ``trainer.max_staleness`` versions behind)."""
    max_staleness: int = bounded(1, ge=0)
    """``async``: most policy versions the weights that generated a trajectory may lag the weights
    it trains (0: the same as ``sync``). The rollout waits rather than exceed it; a queued batch
    beyond it (a resume with a lower bound) is generated again from its prompts."""
    rollout_queue_size: int = bounded(2, ge=1)
    """``async``: most generated batches waiting ahead of the trainer."""
    partial_rollouts: str = choice("finish", "continue")
    """What in-flight rollouts do when new weights arrive (docs/async.md): ``finish`` them on the
    weights they started with (the push waits), or ``continue`` them with the new weights from the
    next token on (a partial rollout: earlier tokens, log-probs and versions are kept, the KV
    cache is recomputed). ``continue`` needs ``trainer.mode=async``, ``hardware.placement=split``
    and an engine that takes weights mid-generation (native, hf)."""
    profile: str = choice("none", "torch", "npu", "memory", "nsight")
    """Profiler run inside every worker during ``trainer.profile_steps`` (set by ``rlkit profile``)."""
    profile_steps: list[int] = bounded([2, 3], ge=1)
    """First and last RL step (inclusive) that ``trainer.profile`` records (clamped to the run)."""
    replay: str = choice("off", "record", "replay")
    """``record``: save each step's rollouts (what the engine generated, before scoring) to
    ``trainer.replay_dir``; ``replay``: use a recording's rollouts instead of generating (scoring,
    advantages and the update run again: a loss or reward can be debugged without re-sampling). A
    replay whose rollout-deciding config differs from the recording's stops with one line."""
    replay_dir: str | None = None
    """Folder of ``trainer.replay``: where ``record`` writes (null: ``RUN/replay``) and the recording
    ``replay`` reads (required)."""
    trace_every: int = bounded(1, ge=0)
    """Write a sample of every Nth step's rollouts to ``RUN/traces/step_N.parquet`` (prompts,
    responses as text and token ids, rewards, advantages, lengths, finish reasons, rollout vs
    trainer log-prob gaps; ``rlkit report`` shows them). 0 = no traces."""
    trace_rows: int = bounded(8, ge=1)
    """Rollouts (rows) sampled per traced step."""
    trace_max_mb: float = bounded(256.0, gt=0)
    """Size bound of ``RUN/traces``: once it holds this many MiB the run writes no more traces (one warning)."""


@dataclass
class SFTConfig:
    max_length: int = bounded(256, ge=1)
    """Longest training sequence in tokens; longer ones are truncated (and counted)."""
    messages_key: str = "messages"
    """Column holding multi-turn chat messages (used when ``sft.prompt_key`` is null)."""
    prompt_key: str | None = None
    """Column of single-turn prompts (with ``sft.response_key``) instead of ``messages``."""
    response_key: str | None = None
    """Column of single-turn responses."""
    truncation: str = choice("right", "left", "error")
    """How an over-long sequence is cut (or refused)."""
    val_every: int = bounded(50, ge=0)
    """Compute the validation loss every N steps (0 = never)."""


@dataclass
class HardwareConfig:
    profile: str | None = None
    """Hardware profile applied (set by rlkit): the ``--profile`` name or file, ``cpu`` when no
    ``--profile`` was given and no GPU or NPU was found, null when the schema's values were used."""
    device: str = choice("auto", "cpu", "cuda", "rocm", "npu", profile=True)
    """``auto`` (a GPU when present, else CPU), ``cpu``, ``cuda``, ``rocm`` (AMD) or ``npu`` (Ascend)."""
    nodes: int = bounded(1, ge=1, profile=True)
    """Nodes of the Ray cluster to use."""
    devices_per_node: int = bounded(1, ge=1, profile=True)
    """Devices (GPUs/NPUs; workers on CPU) per node."""
    ray_address: str | None = profile_key(None)
    """Existing Ray cluster to join (``auto`` or host:port); null starts a local one (or uses RAY_ADDRESS)."""
    placement: str = choice("colocated", "split", profile=True)
    """``colocated`` (actor, rollout and ref share each device) or ``split`` (the rollout engine on
    ``hardware.rollout_devices`` devices of its own, the trained roles on the rest; weights move
    between them after every update, and ``trainer.mode=one_step_off|async`` overlaps the two)."""
    rollout_devices: int = bounded(1, ge=1, profile=True)
    """``split``: devices (workers on CPU) that run the rollout engine; the other
    ``nodes x devices_per_node - rollout_devices`` train."""
    weight_transfer: str = choice("auto", "object_store", "collective", profile=True)
    """``split``: how the weights reach the rollout workers after an update. ``collective``: a
    broadcast from the actor's rank 0 over a process group of their own (gloo on CPU, NCCL on
    GPUs); ``object_store``: buckets through Ray's object store. ``auto`` picks ``collective`` with
    split placement where the backend exists (CPU, CUDA, ROCm), else ``object_store`` (NPU, and
    ``trainer.partial_rollouts=continue``, whose pushes reach a running generation; colocated
    placement moves the weights in-process whatever this says). The run's config.yaml records the
    pick."""
    memory_per_device_gb: float | None = bounded(None, gt=0, profile=True)
    """Memory the profile assumes per device; checked against the device found."""
    stage_timeout_s: float | None = bounded(None, gt=0, profile=True)
    """A stage of a step (one call on the workers) that runs longer than this writes every worker's
    stacks to ``RUN/stacks-<step>-<stage>.txt`` and stops the run; null = 300 s on CPU, 1800 s on
    an accelerator."""
    worker_start_timeout_s: float | None = bounded(None, gt=0, profile=True)
    """Deadline for the workers to start and build their roles (models loaded); null = 300 s on
    CPU, 1800 s on an accelerator."""
    sync_timeout_s: float | None = bounded(None, gt=0, profile=True)
    """Deadline of a weight sync from the actor to the rollout engine; null = 120 s on CPU, 600 s
    on an accelerator."""
    ray_connect_timeout_s: float = bounded(10.0, gt=0, profile=True)
    """How long the address of ``hardware.ray_address`` gets to answer before the run stops."""


@dataclass
class RlkitConfig:
    """A whole run: recipe values, then profile, then ``--config`` file, then ``KEY=VALUE``."""

    recipe: str = "grpo"
    """Name of the recipe this config came from (set by rlkit)."""
    hooks: str | None = None
    """Module in ``recipes/`` whose ``hooks()`` changes the RL step (set by recipes that need code)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    ref: RefConfig = field(default_factory=RefConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
