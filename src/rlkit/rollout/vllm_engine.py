"""The ``vllm`` rollout engine: vLLM in-process (colocated), behind :class:`~rlkit.rollout.base.RolloutEngine`.

Install with ``pip install rlkit[vllm]`` on a GPU, ``scripts/install_vllm_cpu.sh`` on a CPU.

Sampling semantics (the same as the native engine's): the engine runs vLLM with
``logprobs_mode="processed_logprobs"``, so the log-prob vLLM returns for a sampled token is taken
from the distribution it sampled from (after repetition penalty, temperature, min-p, top-k and
top-p): that is :attr:`Completion.sampling_logprobs`. ``Completion.logprobs`` (``log_softmax(logits
/ T)``, untruncated) is the same number when the request truncates nothing; for greedy requests it
is ``log_softmax(logits)`` and ``sampling_logprobs`` is 0. vLLM cannot return both for a request
that truncates (top-k / top-p / min-p / repetition penalty): there ``logprobs`` is ``None`` and the
trainer's own recomputation stands in (see docs/rollout-engines.md).

Weights: :meth:`VllmEngine.update_weights` sends buckets of HF-named tensors to
:class:`~rlkit.rollout.vllm_extension.WeightSyncExtension` inside vLLM's worker, resets the prefix
cache, bumps :attr:`VllmEngine.weight_version` and keeps the worker's receipt (the sums of every
tensor as vLLM's loader took it, for the trainer to compare with what it sent); a push that left
a parameter out or loaded a name into nothing, or whose read-back (:meth:`VllmEngine.weights_checksum`:
the parameters vLLM keeps in their Hugging Face layout) differs, raises :class:`WeightSyncError`
instead of training on stale rollouts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

import torch

from rlkit.errors import UserError
from rlkit.hardware import device as hw
from rlkit.models import load_tokenizer, stop_token_ids
from rlkit.rollout.base import Completion, EngineGauges, FinishReason, ProgressFn, SamplingParams
from rlkit.rollout.gauges import CounterRate, vllm_gauges
from rlkit.rollout.weight_sync import (
    Checksums,
    Receipt,
    VersionedWeights,
    WeightLedger,
    WeightSyncError,
    checksum_names,
    checksum_of,
    land_push,
)

__all__ = ["VllmEngine", "WeightSyncError"]

EXTENSION = "rlkit.rollout.vllm_extension.WeightSyncExtension"
# Bytes of tensors sent to the worker per collective_rpc call.
DEFAULT_BUCKET_BYTES = 256 << 20
INSTALL_HINT = "pip install 'rlkit[vllm]' on a GPU, or run scripts/install_vllm_cpu.sh on a CPU"
# vLLM's CPU attention kernels need a head size of at least this.
MIN_CPU_HEAD_SIZE = 32
# The distributions that provide ``import vllm``: the CUDA build and the CPU build.
_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def require_vllm() -> Any:
    """Import vllm, or raise a :class:`UserError` saying how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise UserError(f"rollout.engine=vllm needs the vllm package ({exc})", hint=INSTALL_HINT) from exc
    return vllm


def _let_vllm_scan_llvmlite() -> None:
    """Make llvmlite's ctypes wrapper safe for vLLM's start-up scan of every loaded module.

    vLLM 0.32 walks ``sys.modules`` when it starts a worker and calls ``vars(x).get(...)`` on each
    module attribute that has a ``__dict__``. llvmlite's ``ffi.lib`` (loaded whenever numba is, e.g.
    by bm25s in the retrieval tool) has ``__slots__`` and a catch-all ``__getattr__`` that wraps any
    name as a C function, ``__dict__`` included, so vLLM dies with ``'_lib_fn_wrapper' object has no
    attribute 'get'``. Here dunder names are no longer looked up as C functions (llvmlite's own are
    all ``LLVMPY_*``), so ``lib`` has no ``__dict__`` and vLLM skips it.
    """
    cls = type(getattr(sys.modules.get("llvmlite.binding.ffi"), "lib", None))
    lookup = getattr(cls, "__getattr__", None)
    if lookup is None or getattr(lookup, "_rlkit_guarded", False):
        return

    def __getattr__(self: Any, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lookup(self, name)

    __getattr__._rlkit_guarded = True  # type: ignore[attr-defined]
    cls.__getattr__ = __getattr__


def settle_cpu_threads() -> None:
    """Give the calling thread torch's OpenMP thread count before vLLM's CPU attention runs in it.

    vLLM's CPU attention plans its work for ``omp_get_max_threads()`` threads and checks that count
    again when the kernel runs. A thread other than the one that set torch's thread count (the
    agent path's engine thread, say) starts with OpenMP's default, and torch sets it to its own
    count only at the thread's first parallel op, which can fall between the plan and the check
    (``Check failed: input->metadata->thread_num == thread_num (1 vs. 2)``). Asking torch for its
    count sets the thread's count first, so both read the same number; on a thread that already has
    it, this is a no-op.
    """
    torch.get_num_threads()


def vllm_version() -> str | None:
    """The installed vllm's version without importing it (importing takes ~10 s), or None."""
    from importlib import metadata
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        return None
    for dist in _DISTRIBUTIONS:
        try:
            return f"{metadata.version(dist)} ({dist})"
        except metadata.PackageNotFoundError:
            continue
    return "unknown version"


def vllm_runs_on_cpu() -> bool:
    """Whether vLLM would run on the CPU here: the CPU build is installed, or there is no CUDA device."""
    from importlib import metadata

    try:
        metadata.version("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        return hw.device_type() not in ("cuda", "rocm")


def model_len(model_path: str, wanted: int | None) -> int:
    """``wanted`` (default 4096) capped at the model's ``max_position_embeddings`` (vLLM refuses more)."""
    from rlkit.models import load_hf_config

    limit = load_hf_config(model_path).get("max_position_embeddings")
    wanted = wanted or 4096
    return min(wanted, int(limit)) if limit else wanted


def cpu_head_size_reason(hf_config: dict[str, Any]) -> str | None:
    """Why vLLM's CPU backend cannot run this model (its head size), or None."""
    heads = int(hf_config.get("num_attention_heads") or 1)
    head = int(hf_config.get("head_dim") or int(hf_config.get("hidden_size", 0)) // heads)
    if head >= MIN_CPU_HEAD_SIZE or not vllm_runs_on_cpu():
        return None
    return f"head size {head}: vLLM's CPU attention needs at least {MIN_CPU_HEAD_SIZE}"


class VllmEngine(VersionedWeights):
    """vLLM's offline ``LLM`` in this process, with rlkit's weight-sync extension.

    Args:
        model_path: A Hugging Face folder (config, safetensors, tokenizer).
        dtype: ``float32`` / ``bfloat16`` / ``float16`` / ``auto``.
        max_model_len: Longest prompt + completion.
        max_num_seqs: Most sequences vLLM schedules together.
        gpu_memory_utilization: Fraction of the GPU vLLM may take (ignored on CPU).
        kv_cache_gib: CPU only: KV-cache size in GiB (``VLLM_CPU_KVCACHE_SPACE``), unless already set.
        seed: vLLM's engine seed (requests without a seed draw from it).
        enable_sleep_mode: Let :meth:`sleep` free the KV cache and offload weights (GPU only;
            vLLM's CPU backend has no sleep mode and ignores it).
        enforce_eager: Skip CUDA graphs / compilation.
        bucket_bytes: Bytes of tensors per ``collective_rpc`` during a weight push.
        in_process: Run vLLM's engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``):
            tensors then reach the worker by reference, and start-up is faster.
        extra: Further keyword arguments for ``vllm.LLM``.
    """

    INSTALL_HINT = INSTALL_HINT
    loads_checkpoint = True

    @staticmethod
    def version() -> str:
        """The installed vllm's version.

        Raises:
            ImportError: vllm is not installed.
        """
        found = vllm_version()
        if found is None:
            raise ImportError("no module named 'vllm'")
        return found

    @staticmethod
    def unsupported_reason(hf_config: dict[str, Any]) -> str | None:
        """Why vLLM cannot run this model here (on a CPU: a head size below 32), or None."""
        return cpu_head_size_reason(hf_config)

    @classmethod
    def from_checkpoint(
        cls,
        model_path: str,
        *,
        dtype: str,
        max_num_seqs: int,
        max_model_len: int | None,
        gpu_memory_utilization: float,
        cuda_graphs: bool,
        seed: int,
        log_dir: str | None = None,
        kv_cache_gib: int = 1,
        enable_sleep_mode: bool = True,
        bucket_mb: int = 256,
    ) -> VllmEngine:
        """The engine from the registry's common settings and the ``rollout.vllm`` keys.

        ``gpu_memory_utilization`` is vLLM's: a fraction of the *total* GPU memory; ``cuda_graphs``
        off means ``enforce_eager``; ``max_model_len`` is capped at the model's
        ``max_position_embeddings``. ``log_dir`` is unused (vLLM logs to the worker's output).
        """
        return cls(
            model_path,
            dtype=dtype,
            max_model_len=model_len(model_path, max_model_len),
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_gib=kv_cache_gib,
            seed=seed,
            enable_sleep_mode=enable_sleep_mode,
            enforce_eager=not cuda_graphs,
            bucket_bytes=bucket_mb << 20,
        )

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        max_model_len: int = 4096,
        max_num_seqs: int = 256,
        gpu_memory_utilization: float = 0.5,
        kv_cache_gib: int = 1,
        seed: int = 0,
        enable_sleep_mode: bool = False,
        enforce_eager: bool = False,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        in_process: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> None:
        vllm = require_vllm()
        from vllm.platforms import current_platform

        self.on_cpu = current_platform.is_cpu()
        if self.on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))
        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.bucket_bytes = bucket_bytes
        self.max_model_len = max_model_len
        _let_vllm_scan_llvmlite()
        self.llm = vllm.LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            enable_sleep_mode=enable_sleep_mode and not self.on_cpu,
            enforce_eager=enforce_eager,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=EXTENSION,
            **{"disable_log_stats": False, **(extra or {})},  # vLLM's own stat loggers feed gauges()
        )
        self.tokenizer = load_tokenizer(model_path)
        self.default_stop_ids = stop_token_ids(self.tokenizer)
        self.can_sleep = enable_sleep_mode and not self.on_cpu
        self.ledger = WeightLedger()
        self._names = self._rpc("rlkit_param_names")
        self._checked = checksum_names(self._names)
        self._asleep = False
        self._generated = CounterRate()

    # ------------------------------------------------------------------ RolloutEngine

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        *,
        progress: ProgressFn | None = None,
    ) -> list[list[Completion]]:
        """Sample ``n`` completions per prompt (see the module docstring for the log-probs)."""
        if self._asleep:
            raise RuntimeError("the rollout engine is asleep: call wake() before generate()")
        per_prompt = params if isinstance(params, list) else [params] * len(prompt_token_ids)
        if len(per_prompt) != len(prompt_token_ids):
            raise ValueError(f"{len(per_prompt)} parameter sets for {len(prompt_token_ids)} prompts")
        if not prompt_token_ids:
            return []
        self._check_lengths(prompt_token_ids)
        if self.on_cpu:
            settle_cpu_threads()
        vparams = [to_vllm_params(sp, self.default_stop_ids) for sp in per_prompt]
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_token_ids]
        outputs = self.llm.generate(prompts, vparams, use_tqdm=False)
        groups = [completions_of(out.outputs, sp) for out, sp in zip(outputs, per_prompt, strict=True)]
        if progress is not None:
            progress(sum(len(g) for g in groups), sum(len(c.token_ids) for g in groups for c in g))
        return groups

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push HF-named tensors in buckets, reset the prefix cache, then check that the push landed.

        Raises:
            WeightSyncError: a pushed name loaded nothing, a parameter was left out, or the
                read-back checksum does not match the pushed tensors (:func:`land_push`).
        """
        checked = set(self._checked)
        expected: Checksums = {}
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        for name, tensor in named_tensors:
            if name in checked:
                expected[name] = checksum_of(tensor)
            bucket.append((name, tensor.detach()))
            size += tensor.numel() * tensor.element_size()
            if size >= self.bucket_bytes:
                self._rpc("rlkit_stage", bucket)
                bucket, size = [], 0
        if bucket:
            self._rpc("rlkit_stage", bucket)
        receipt = Receipt.from_dict(self._rpc("rlkit_commit"))
        self.llm.reset_prefix_cache()
        land_push(self, expected, receipt)

    def weights_checksum(self) -> Checksums:
        """The checksums of a few parameters, read back from inside the engine (vLLM names)."""
        checksums: Checksums = self._rpc("rlkit_checksums", self._checked)
        return checksums

    def sleep(self) -> None:
        """GPU with sleep mode: offload weights, drop the KV cache. CPU: nothing is freed (no sleep mode)."""
        if self.can_sleep and not self._asleep:
            self.llm.sleep(level=1)
        self._asleep = True

    def wake(self) -> None:
        """Undo :meth:`sleep` (weights back first, then the KV cache)."""
        if self.can_sleep and self._asleep:
            self.llm.wake_up(tags=["weights"])
            self.llm.wake_up(tags=["kv_cache"])
        self._asleep = False

    def gauges(self) -> EngineGauges:
        """vLLM's own scheduler gauges (running and waiting requests, KV-cache use) and the rate of
        its generated-token counter, from the metrics its stat loggers keep (all None with
        ``disable_log_stats`` passed in ``extra``)."""
        llm = self.llm
        if llm is None or not getattr(llm.llm_engine, "log_stats", False):
            return EngineGauges()
        values: dict[str, float] = {}
        for metric in llm.get_metrics():
            value = getattr(metric, "value", None)
            if isinstance(value, (int, float)):
                values[metric.name] = values.get(metric.name, 0.0) + float(value)
        return vllm_gauges(values, self._generated)

    def close(self) -> None:
        """Shut vLLM's engine down and drop the model."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        self.llm = None

    def _check_lengths(self, prompts: list[list[int]]) -> None:
        """The native engine's rule: a prompt that cannot fit ``max_model_len`` is the user's to fix.

        (A completion that would run past it ends there with ``finish_reason="length"``.)
        """
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {i} is empty")
            if len(prompt) >= self.max_model_len:
                raise UserError(
                    f"prompt {i} has {len(prompt)} tokens, the vLLM engine's max_model_len is {self.max_model_len}",
                    hint="raise the engine's max_model_len or shorten data.max_prompt_length",
                )

    def _rpc(self, method: str, *args: Any) -> Any:
        return self.llm.collective_rpc(method, args=args)[0]


def sampling_kwargs(sp: SamplingParams, default_stop_ids: list[int]) -> dict[str, Any]:
    """rlkit's :class:`SamplingParams` as vLLM's request fields (the offline API's and the server's).

    Stop tokens are kept in the output and end a completion only through ``stop_token_ids`` (the
    model's own stop tokens unless ``ignore_eos``): the native engine's rule. vLLM refuses ``n > 1``
    for greedy requests, so those ask for one completion (:func:`completions_of` repeats it ``n`` times).
    """
    return {
        "n": 1 if sp.greedy else sp.n,
        "temperature": sp.temperature,
        "top_p": sp.top_p,
        "top_k": sp.top_k,
        "min_p": sp.min_p,
        "max_tokens": sp.max_tokens,
        "stop_token_ids": _stop_ids(sp, default_stop_ids),
        "stop": list(sp.stop) if sp.stop else None,
        "seed": sp.seed,
        "repetition_penalty": sp.repetition_penalty,
        "logprobs": 0 if sp.logprobs else None,
        "ignore_eos": True,
        "skip_special_tokens": False,
    }


def to_vllm_params(sp: SamplingParams, default_stop_ids: list[int]) -> Any:
    """rlkit's :class:`SamplingParams` as a ``vllm.SamplingParams`` (detokenizing only for stop strings)."""
    from vllm import SamplingParams as VllmParams

    return VllmParams(**sampling_kwargs(sp, default_stop_ids), detokenize=bool(sp.stop))


def truncates(sp: SamplingParams) -> bool:
    """Whether the sampled distribution differs from ``softmax(logits / T)`` (so vLLM gives only one)."""
    return sp.top_k != -1 or sp.top_p < 1.0 or sp.min_p > 0.0 or sp.repetition_penalty != 1.0


def split_logprobs(
    processed: list[float] | None, sp: SamplingParams
) -> tuple[list[float] | None, list[float] | None]:
    """``(logprobs, sampling_logprobs)`` from vLLM's ``processed_logprobs`` of the sampled tokens."""
    if processed is None:
        return None, None
    if sp.greedy:
        return processed, [0.0] * len(processed)
    return (None if truncates(sp) else processed), processed


def completions_of(outputs: list[Any], sp: SamplingParams) -> list[Completion]:
    """vLLM ``CompletionOutput`` s as rlkit :class:`Completion` s."""
    result = []
    for out in outputs:
        ids = list(out.token_ids)
        processed = None
        if sp.logprobs and out.logprobs is not None:
            processed = [float(step[tok].logprob) for step, tok in zip(out.logprobs, ids, strict=True)]
        logprobs, sampling = split_logprobs(processed, sp)
        reason: FinishReason = "length" if out.finish_reason == "length" else "stop"
        result.append(Completion(ids, logprobs, sampling, reason))
    return repeat_greedy(result, sp)


def repeat_greedy(completions: list[Completion], sp: SamplingParams) -> list[Completion]:
    """The one completion of a greedy request as its ``n`` identical samples (vLLM samples it once)."""
    if not sp.greedy or sp.n == 1 or len(completions) != 1:
        return completions
    (c,) = completions
    return [
        Completion(
            list(c.token_ids),
            None if c.logprobs is None else list(c.logprobs),
            None if c.sampling_logprobs is None else list(c.sampling_logprobs),
            c.finish_reason,
        )
        for _ in range(sp.n)
    ]


def _stop_ids(sp: SamplingParams, default_stop_ids: list[int]) -> list[int]:
    """Explicit stop ids always apply; the model's own unless ``ignore_eos``."""
    if sp.stop_token_ids is not None:
        return list(sp.stop_token_ids)
    return [] if sp.ignore_eos else list(default_stop_ids)
