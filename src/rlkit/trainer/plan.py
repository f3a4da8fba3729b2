"""``rlkit plan``: what a run would do per step and per device, from the config and config.json alone.

Nothing is started and no weight is read: the batch math follows the trainer's own rules (prompts,
samples, mini-batches, token-budget micro-batches), the placement follows
:class:`~rlkit.controller.pool.ResourcePool` (ranks in node order, every role on every rank), and
memory comes from :mod:`rlkit.models.memory`. A phase that would not fit the profile's
``hardware.memory_per_device_gb`` gets a warning naming the keys that fix it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from rlkit.config.schema import RlkitConfig
from rlkit.models import memory as mem
from rlkit.models import native_unsupported_reason
from rlkit.models.logprobs import FUSED_CHUNK_TOKENS, TORCH_CHUNK_TOKENS
from rlkit.trainer.preflight import model_config_json
from rlkit.trainer.settings import compute_dtype

GIB = 2**30
#: ``model.gradient_checkpointing=null`` turns checkpointing off when the update without it, beside
#: everything resident then, is estimated at most this share of ``hardware.memory_per_device_gb``
#: (the rest is for what the estimate leaves out: allocator caching, CUDA graphs, kernel workspaces;
#: the estimate was within 9 % of the measured peaks on one GPU, docs/multi-node.md)
AUTO_CHECKPOINTING_SHARE = 0.75


@dataclass(frozen=True)
class BatchMath:
    """Per RL step, over the whole cluster and per device."""

    prompts: int
    samples: int
    world: int
    samples_per_device: int
    mini_batches: int
    optimizer_steps: int
    rows_per_mini_batch_per_device: int
    max_tokens_per_sample: int
    micro_batches_per_mini_batch: int
    """At most, when every sample is of full length (shorter ones pack more per micro-batch)."""
    tokens_per_micro_batch: int


@dataclass
class Plan:
    batch: BatchMath
    placement: list[str]
    phases: list[mem.PhaseMemory]
    memory_gib: float | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def batch_math(cfg: RlkitConfig) -> BatchMath:
    """The step's batch sizes as the trainer cuts them (config/rules.py already checked they divide)."""
    world = cfg.hardware.nodes * cfg.hardware.devices_per_node
    prompts, n = cfg.data.batch_size, cfg.rollout.n
    mini = cfg.actor.mini_batch_size
    rows = max(1, mini * n // world)
    length = cfg.data.max_prompt_length + cfg.data.max_response_length
    budget = cfg.actor.micro_batch_tokens
    per_micro = max(1, budget // length)  # a sample longer than the budget goes alone
    return BatchMath(
        prompts=prompts,
        samples=prompts * n,
        world=world,
        samples_per_device=prompts * n // world,
        mini_batches=prompts // mini,
        optimizer_steps=prompts // mini * cfg.actor.epochs,
        rows_per_mini_batch_per_device=rows,
        max_tokens_per_sample=length,
        micro_batches_per_mini_batch=math.ceil(rows / per_micro),
        tokens_per_micro_batch=min(rows, per_micro) * length,
    )


def roles(cfg: RlkitConfig) -> list[str]:
    """The roles every rank hosts (the trainer colocates them all on each device)."""
    from rlkit.trainer.setup import _critic_enabled, _ref_enabled

    out = ["actor", "rollout"]
    out += ["ref"] if _ref_enabled(cfg) else []
    out += ["critic"] if _critic_enabled(cfg) else []
    out += ["reward_model"] if cfg.reward.model_path else []
    return out


def placement(cfg: RlkitConfig, device: str) -> list[str]:
    """One line per node: its devices, the global ranks on them, and the roles each rank hosts."""
    hw, hosted = cfg.hardware, ", ".join(roles(cfg))
    per = hw.devices_per_node
    unit = "worker process" if device == "cpu" else f"{device} device"
    kind = unit if per == 1 else unit + ("es" if device == "cpu" else "s")
    lines = []
    for node in range(hw.nodes):
        first, last = node * per, node * per + per - 1
        ranks = f"rank {first}" if per == 1 else f"ranks {first}-{last}"
        lines.append(f"node {node}: {per} {kind} -> {ranks}, each hosting {hosted}")
    return lines


def plan(cfg: RlkitConfig) -> Plan:
    """The whole plan of ``cfg`` (batch math, placement, memory per device and phase, warnings)."""
    device = cfg.hardware.device if cfg.hardware.device != "auto" else _local_device()
    batch = batch_math(cfg)
    hf = model_config_json(cfg.model.path)
    result = Plan(batch, placement(cfg, device), [], cfg.hardware.memory_per_device_gb)
    if hf is None:
        result.notes.append(f"memory: {cfg.model.path} is not cached here; fetch it to see the estimate")
        return result
    shape = mem.ModelShape.from_hf(hf)
    ckpt, why = checkpointing_choice(cfg, device)
    result.phases = _phases(cfg, shape, batch, device, ckpt)
    result.notes.insert(
        0, f"model: {shape.num_params / 1e6:.1f}M parameters, {compute_dtype(cfg, device)} compute"
    )
    if cfg.model.gradient_checkpointing is None:
        result.notes.insert(1, f"model.gradient_checkpointing=null -> {str(ckpt).lower()}: {why}")
    _warn(cfg, result)
    return result


def checkpointing_choice(cfg: RlkitConfig, device: str | None = None) -> tuple[bool, str]:
    """``model.gradient_checkpointing`` with null resolved for an RL run, and why, in words.

    Null is off where the actor's update without checkpointing fits: its estimated peak (the
    colocated rollout engine's KV cache included, as the engine stays awake through the update
    when it fits) at most :data:`AUTO_CHECKPOINTING_SHARE` of ``hardware.memory_per_device_gb``;
    on otherwise, and where nothing sizes it (no config.json here, the Megatron engine or an
    architecture the native decoder does not run, which the estimate does not model). Without
    ``hardware.memory_per_device_gb`` (no profile) it is off.
    """
    chosen = cfg.model.gradient_checkpointing
    if chosen is not None:
        return bool(chosen), "set"
    memory = cfg.hardware.memory_per_device_gb
    if memory is None:
        return False, "no hardware.memory_per_device_gb to size the update against"
    if "megatron" in (cfg.actor.strategy, cfg.critic.strategy):
        return True, "the memory estimate does not model the Megatron engine"
    hf = model_config_json(cfg.model.path)
    if hf is None:
        return True, f"{cfg.model.path} is not here to size the update"
    if native_unsupported_reason(hf) is not None:  # trained through transformers' own modules
        return (
            True,
            "the memory estimate models rlkit's decoder, not this architecture's transformers modules",
        )
    device = device or (cfg.hardware.device if cfg.hardware.device != "auto" else _local_device())
    shape, batch = mem.ModelShape.from_hf(hf), batch_math(cfg)
    phases = _phases(cfg, shape, batch, device, False)
    rollout, update = phases[0], phases[2]  # the rollout, the actor's update without checkpointing
    need = update.total
    if cfg.hardware.placement == "colocated":
        need += sum(v for k, v in rollout.parts.items() if k.startswith("KV cache"))
    limit = AUTO_CHECKPOINTING_SHARE * memory * GIB
    if need <= limit:
        return False, f"the update needs ~{need / GIB:.0f} of {memory:g} GiB per device without it"
    return True, (
        f"the update would need ~{need / GIB:.0f} GiB per device without it, more than "
        f"{AUTO_CHECKPOINTING_SHARE:.0%} of {memory:g} GiB"
    )


def resolve_checkpointing(cfg: RlkitConfig) -> bool:
    """Set ``model.gradient_checkpointing`` to :func:`checkpointing_choice`'s in place (the run's
    config.yaml then records it); returns it."""
    cfg.model.gradient_checkpointing = checkpointing_choice(cfg)[0]
    return cfg.model.gradient_checkpointing


def _local_device() -> str:
    from rlkit.hardware.device import device_type

    return device_type()


def _phases(
    cfg: RlkitConfig, shape: mem.ModelShape, batch: BatchMath, device: str, ckpt: bool
) -> list[mem.PhaseMemory]:
    """Rollout, log-probs and the updates (``ckpt``: with gradient checkpointing), each with what
    stays resident on the device meanwhile."""
    world, dtype_b = batch.world, mem.DTYPE_BYTES[compute_dtype(cfg, device)]
    state = mem.training_state(shape, world)
    resident = {"actor weights": state["weights"], "actor optimizer": state["optimizer"]}
    param_offload, optimizer_offload = _offloads(cfg, device)
    if param_offload:  # CPUOffloadPolicy: weights, gradients and AdamW live on the host
        resident = {"actor weights": 0, "actor optimizer": 0}
    elif optimizer_offload:  # on the host between optimizer steps only
        resident["actor optimizer"] = 0
    hosted = roles(cfg)
    if "ref" in hosted and not cfg.ref.param_offload:
        resident["ref weights"] = state["weights"]
    if "critic" in hosted and not cfg.critic.param_offload:
        resident.update({"critic weights": state["weights"], "critic optimizer": state["optimizer"]})
    resident["rollout weights"] = shape.num_params * dtype_b
    slots = _kv_slots(cfg, shape, batch, device, sum(resident.values()), dtype_b)
    kv = mem.rollout_cache(shape, slots, batch.max_tokens_per_sample, dtype_b)
    step = _micro_batch_pass(cfg, batch, device, dtype_b, ckpt)
    # the optimizer step: all gradients, and AdamW's state when it comes back from the host for it
    optimizer = {"gradients": int(shape.num_params * step.grad_bytes)}
    if optimizer_offload:
        optimizer["optimizer state (from the host)"] = state["optimizer"]
    logprobs_at, logprobs = mem.peak_of(mem.logprob_pass_moments(shape, step))
    phases = [
        mem.PhaseMemory("rollout", {**resident, f"KV cache ({slots} slots)": kv}),
        mem.PhaseMemory("log-probs", {**resident, **logprobs}, at=logprobs_at),
        _update_phase("actor update" + (" (checkpointed)" if ckpt else ""), shape, step, resident, optimizer),
    ]
    if not ckpt:  # what checkpointing would save, for the reader deciding whether to turn it on
        with_ckpt = replace(step, checkpointing=True)
        name = "actor update with model.gradient_checkpointing=true"
        phases.append(_update_phase(name, shape, with_ckpt, resident, optimizer))
    return phases


def _offloads(cfg: RlkitConfig, device: str) -> tuple[bool, bool]:
    """The actor's ``param_offload`` and ``optimizer_offload`` as the engine applies them (only
    off an accelerator's memory: on the CPU there is nowhere to offload to)."""
    on_accelerator = device != "cpu"
    param = cfg.actor.param_offload and on_accelerator
    return param, cfg.actor.optimizer_offload and on_accelerator and not param


def _micro_batch_pass(
    cfg: RlkitConfig, batch: BatchMath, device: str, dtype_b: int, ckpt: bool
) -> mem.MicroBatchPass:
    """How the actor runs a micro-batch here (see :class:`rlkit.training.engine.FSDPEngine`).

    One rank trains the plain module (fp32 parameters, autocast to a lower compute dtype); several
    ranks, or offloaded parameters, FSDP2 with fp32 gradient shards (on the host when offloaded).
    Every micro-batch but a mini-batch's first finds the earlier ones' gradients resident.
    """
    param_offload, _ = _offloads(cfg, device)
    return mem.MicroBatchPass(
        tokens=batch.tokens_per_micro_batch,
        dtype_bytes=dtype_b,
        checkpointing=ckpt,
        chunk_tokens=FUSED_CHUNK_TOKENS if device == "cuda" else TORCH_CHUNK_TOKENS,
        cuda=device == "cuda",
        param_bytes=4,
        grad_bytes=0.0 if param_offload else 4 / batch.world,
        fsdp=batch.world > 1 or param_offload,
        grads_resident=batch.micro_batches_per_mini_batch > 1,
    )


def _update_phase(
    name: str,
    shape: mem.ModelShape,
    step: mem.MicroBatchPass,
    resident: dict[str, int],
    optimizer: dict[str, int],
) -> mem.PhaseMemory:
    """The update's peak: the larger of a micro-batch's peak moment and the optimizer step's."""
    moment, parts = mem.update_peak(shape, step)
    if sum(optimizer.values()) > sum(parts.values()):
        moment, parts = "optimizer step", optimizer
    return mem.PhaseMemory(name, {**resident, **parts}, at=moment)


def _kv_slots(
    cfg: RlkitConfig, shape: mem.ModelShape, batch: BatchMath, device: str, resident: int, dtype_b: int
) -> int:
    """KV-cache slots the native engine would take: all of ``max_num_seqs`` on CPU, else its memory share."""
    want = cfg.rollout.max_num_seqs
    memory = cfg.hardware.memory_per_device_gb
    if device == "cpu" or memory is None:
        return want
    per_slot = mem.rollout_cache(shape, 1, batch.max_tokens_per_sample, dtype_b)
    free = max(0.0, memory * GIB - resident)
    return min(want, int(cfg.rollout.gpu_memory_utilization * free) // per_slot)


def _warn(cfg: RlkitConfig, result: Plan) -> None:
    """A warning per phase that would not fit the device, naming the keys that shrink it."""
    megatron = [role for role in ("actor", "critic") if getattr(cfg, role).strategy == "megatron"]
    if megatron:  # models/memory.py follows the FSDP engine's passes, not Megatron's
        result.notes.append(
            f"{megatron[0]}.strategy=megatron: the memory estimate models the FSDP engine; Megatron's "
            "layers, padded micro-batches and recompute differ (read the run's memory/update_peak_gib)"
        )
    if result.memory_gib is None:
        result.notes.append(
            "no hardware.memory_per_device_gb in this profile: nothing to compare the estimate with"
        )
        return
    limit = result.memory_gib * GIB
    fixes = {
        "rollout": "actor.optimizer_offload=true, actor.param_offload=true, or more devices (--nodes, hardware.devices_per_node)",
        "log-probs": "a smaller actor.micro_batch_tokens, or more devices",
        "actor update": "model.gradient_checkpointing=true, a smaller actor.micro_batch_tokens, "
        "actor.optimizer_offload=true, or more devices",
    }
    for phase in result.phases:
        fix = fixes.get(phase.phase.split(" (")[0])
        if fix and phase.total > limit:
            result.warnings.append(
                f"{phase.phase} needs ~{phase.total / GIB:.1f} GiB per device, more than the "
                f"{result.memory_gib:g} GiB of hardware.memory_per_device_gb: set {fix}"
            )
    if any(k.startswith("KV cache (0 slots") for k in result.phases[0].parts):
        result.warnings.append(
            "rollout: the memory left beside the resident weights holds no KV-cache slot of "
            "data.max_prompt_length + data.max_response_length tokens: raise rollout.gpu_memory_utilization, "
            "set actor.optimizer_offload=true, or shorten data.max_response_length"
        )


def render(result: Plan) -> str:
    """The plan as text: batch math, placement, a table of memory per phase, warnings last."""
    b = result.batch
    lines = [
        "batch (per RL step)",
        f"  prompts {b.prompts} x rollout.n -> {b.samples} samples; {b.samples_per_device} per device over {b.world}",
        f"  {b.mini_batches} mini-batch(es) x actor.epochs -> {b.optimizer_steps} optimizer step(s) per RL step",
        f"  per mini-batch and device: {b.rows_per_mini_batch_per_device} samples of up to "
        f"{b.max_tokens_per_sample} tokens -> at most {b.micro_batches_per_mini_batch} micro-batch(es) "
        f"of up to {b.tokens_per_micro_batch} tokens (actor.micro_batch_tokens)",
        "placement",
        *(f"  {line}" for line in result.placement),
    ]
    if result.phases:
        limit = f" of {result.memory_gib:g} GiB" if result.memory_gib else ""
        lines.append(f"memory per device (estimate{limit})")
        for phase in result.phases:
            parts = ", ".join(f"{k} {_gib(v)}" for k, v in phase.parts.items() if v)
            parts = f"at {phase.at}: {parts}" if phase.at else parts
            lines.append(f"  {phase.phase:<52} {_gib(phase.total):>10}   {parts}")
    lines += [f"note: {n}" for n in result.notes]
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"
