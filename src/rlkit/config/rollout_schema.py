"""The ``rollout.*`` group of the config schema: sampling, the engine choice and each engine's knobs,
and multi-turn agent loops. Each field's docstring is its documentation (see ``rlkit.config.schema``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlkit.config.keys import bounded, choice, profile_key


@dataclass
class VllmConfig:
    kv_cache_gib: int = bounded(1, ge=1, profile=True)
    """CPU only: the vLLM KV cache in whole GiB (``VLLM_CPU_KVCACHE_SPACE``, unless already set);
    allocated for the whole run (on a GPU ``rollout.gpu_memory_utilization`` sizes it)."""
    enable_sleep_mode: bool = True
    """Let vLLM offload its weights and drop its KV cache while the trainer updates (GPU only;
    vLLM's CPU backend has no sleep mode)."""
    bucket_mb: int = bounded(256, ge=1, profile=True)
    """MiB of tensors sent to vLLM's worker per call during a weight push."""


@dataclass
class ServerConfig:
    url: str | None = None
    """An OpenAI-compatible vLLM server to use (``http://host:port``, started with
    ``VLLM_SERVER_DEV_MODE=1`` and rlkit's worker extension); null = rlkit starts one on 127.0.0.1
    (log: ``<trainer.out_dir>/vllm_server.log``) and stops it at the end of the run."""
    model_name: str = "rlkit"
    """The ``model`` field of requests: the server's served model name (``rlkit`` for one rlkit starts)."""
    startup_timeout_s: float = bounded(600.0, gt=0)
    """Seconds an rlkit-started server gets to answer ``/health`` before the run stops."""
    request_timeout_s: float = bounded(600.0, gt=0)
    """Deadline of one request to the server (a generation or a weight push)."""
    max_concurrency: int = bounded(32, ge=1, profile=True)
    """Prompts in flight to the server at once."""


@dataclass
class MultiTurnConfig:
    enable: bool = False
    """Roll out through an agent loop (``agent``): multi-turn trajectories with tools and
    interactions. Off: one completion per sample, as always. See docs/agentic.md."""
    agent: str = "single_turn"
    """The agent loop: ``single_turn`` (one model turn, today's rollout), ``tool`` (the model calls
    ``tools`` and answers an interaction turn by turn), or a class of your own as
    ``package.module:Class`` or ``file.py:Class`` (a subclass of ``rlkit.agents.loops.AgentLoop``)."""
    tools: list[str] = field(default_factory=list)
    """The tools the ``tool`` loop offers: built-in tool names, and/or the path of a verl tools YAML
    (``tool_config_path`` layout); rows narrow them with ``extra_info.tool_selection``."""
    environment: str | None = None
    """A TRL-style environment class (``package.module:Class`` or ``file.py:Class``): one instance
    per trajectory, ``reset(**extra_info.env_kwargs)``, public methods as tools, ``get_reward()``
    as the trajectory's reward."""
    max_turns: int = bounded(5, ge=1)
    """Most model turns per trajectory (the last one is kept even if it calls a tool)."""
    max_tool_response_length: int = bounded(256, ge=1)
    """Most characters of one tool result shown to the model (cut as ``truncation_side`` says)."""
    truncation_side: str = choice("middle", "left", "right")
    """Which part of a long tool result is kept: ``left`` (its start), ``right`` (its end) or
    ``middle`` (both ends)."""
    max_parallel_calls: int = bounded(1, ge=1)
    """Most tool calls run per model turn; further calls get an error message."""
    parser: str = choice("hermes")
    """How tool calls are read from the model's text: ``hermes`` (Qwen2.5 / Hermes:
    ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``)."""
    tool_timeout_s: float = bounded(30.0, gt=0)
    """Deadline of one tool call; on expiry the model gets an error message (counted as a timeout)."""
    interaction_config_path: str | None = None
    """A YAML file of interactions (simulated users) in verl's (<= 0.7) layout
    ``interaction: [{name, class_name, config}]``; rows pick one with
    ``extra_info.interaction_kwargs.name``."""
    turn_reward: str = choice("last_token", "sum")
    """Where per-turn rewards (interaction scores, tool-call rewards) go: ``last_token`` (on the
    last model token of their turn) or ``sum`` (all on the trajectory's last model token)."""
    max_wait_ms: float = bounded(10.0, ge=0)
    """Longest a generation request waits for others to join its batch while some trajectory is
    busy with a tool (requests go at once when every trajectory is waiting on the engine)."""


@dataclass
class RolloutConfig:
    engine: str = choice("auto", "native", "hf", "vllm", "server")
    """Rollout engine: ``auto`` (``native`` when the model is a Llama / Qwen-family model the native
    decoder runs, ``hf`` otherwise; the run's config.yaml names the one picked), ``native`` (built
    in: KV cache, continuous batching, CUDA graphs), ``hf`` (rlkit's sampler over any transformers
    causal LM: Gemma-2, Phi-3, Mistral, MoE models, ...; slower), ``vllm`` (vLLM in the rollout
    worker; needs the vllm package) or ``server`` (an OpenAI-compatible vLLM server, see
    ``rollout.server``). ``auto`` never picks ``vllm`` or ``server``. See docs/rollout-engines.md."""
    n: int = bounded(8, ge=1)
    """Samples per prompt (the group size of GRPO-style estimators)."""
    temperature: float = bounded(1.0, ge=0)
    """Sampling temperature; the trainer's log-probs use the same temperature."""
    top_p: float = bounded(1.0, gt=0, le=1)
    """Nucleus sampling threshold (1.0 = off)."""
    top_k: int = bounded(-1, ge=1, allow=(-1,))
    """Top-k sampling (-1 = off)."""
    val_temperature: float = bounded(0.0, ge=0)
    """Temperature of validation generations (0 = greedy)."""
    val_n: int = bounded(1, ge=1)
    """Samples per validation prompt."""
    max_num_seqs: int = bounded(256, ge=1, profile=True)
    """Sequences decoded together by the rollout engine (the native engine's KV-cache slots)."""
    cuda_graphs: bool = profile_key(True)
    """Capture the native engine's decode step in CUDA graphs (GPU only)."""
    free_cache: str = choice("auto", "always", "never", profile=True)
    """Colocated placement: whether the rollout engine frees its KV cache (and the native engine its
    CUDA graphs) while the actor updates. ``auto`` measures the first update on an accelerator and
    keeps the engine's memory from then on while the update fits beside it with a margin, so the
    weight sync is a copy and no graph is re-captured; it frees again if the update grows. On the
    CPU ``auto`` frees. ``always`` frees before every update (the most room for the update);
    ``never`` keeps it for the whole run."""
    gpu_memory_utilization: float = bounded(0.5, gt=0, le=1, profile=True)
    """Native engine: the fraction of the device memory *free* when it allocates its KV cache (at
    the first generation and after each wake) that the cache may take. ``vllm`` engine: the fraction
    of the *total* GPU memory vLLM takes at start-up (weights + cache): leave room for the trainer.
    In (0, 1]; ignored on the CPU."""
    vllm: VllmConfig = field(default_factory=VllmConfig)
    """Settings of ``rollout.engine=vllm`` (a server rlkit starts for ``server`` reads its KV-cache
    size from ``VLLM_CPU_KVCACHE_SPACE``, default 1 GiB)."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """Settings of ``rollout.engine=server``."""
    multi_turn: MultiTurnConfig = field(default_factory=MultiTurnConfig)
    """Multi-turn rollouts with tools and interactions (agent loops); see docs/agentic.md."""
