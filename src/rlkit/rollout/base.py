"""The one interface every rollout engine implements (native, and vLLM / SGLang where installed).

A trainer's rollout role and ``rlkit generate`` talk to engines only through :class:`RolloutEngine`:
token ids in, :class:`Completion` lists out, weights pushed in by Hugging Face parameter name,
``sleep`` / ``wake`` around the training phase of a colocated step, and :meth:`RolloutEngine.gauges`
(what the engine is doing right now, for the live Prometheus endpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

FinishReason = Literal["stop", "length"]

# Called by an engine as generation advances: (sequences finished so far, tokens generated so far).
ProgressFn = Callable[[int, int], None]


@dataclass
class SamplingParams:
    """How to sample the completions of one prompt (the same knobs as vLLM's, same meanings).

    Attributes:
        n: Completions per prompt (a GRPO group); the prompt is prefilled once for all of them.
        temperature: Softmax temperature; 0 means greedy decoding.
        top_p: Nucleus sampling: keep the smallest set of most likely tokens whose mass reaches
            ``top_p`` (1.0 = off).
        top_k: Keep the ``top_k`` most likely tokens (-1 = off).
        min_p: Drop tokens whose probability is below ``min_p`` times the top token's (0 = off).
        max_tokens: Most tokens to generate per completion.
        stop_token_ids: Token ids that end a completion (kept as its last token). ``None`` means the
            model's stop tokens (eos, plus the end-of-turn token of chat tokenizers).
        stop: Strings that end a completion; the completion keeps the token that completes the
            string and nothing after it. Needs an engine built with a tokenizer.
        seed: Seed of this request's own random stream; with it, the same prompt, parameters and
            weights give the same completions whatever else is in the batch (see the engine).
        repetition_penalty: Hugging Face's penalty (> 1 discourages tokens already in the prompt
            or the completion: positive logits are divided by it, negative ones multiplied).
        logprobs: Return the log-prob of each sampled token.
        ignore_eos: Do not stop at the model's stop tokens (explicit ``stop_token_ids`` still
            apply); used by benchmarks to generate exactly ``max_tokens``.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    max_tokens: int = 256
    stop_token_ids: list[int] | None = None
    stop: list[str] | None = None
    seed: int | None = None
    repetition_penalty: float = 1.0
    logprobs: bool = True
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"SamplingParams.top_k must be -1 (off) or >= 1, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"SamplingParams.min_p must be in [0, 1], got {self.min_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"SamplingParams.repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.stop is not None and any(not s for s in self.stop):
            raise ValueError("SamplingParams.stop must not contain empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    """One sampled completion of a prompt.

    Attributes:
        token_ids: The generated tokens; a stop token that ended the completion is included (the
            trainer scores and trains on it), a stop string keeps the token that completed it.
        logprobs: Log-prob of each token under the temperature-scaled policy,
            ``log_softmax(logits / T)`` (T = 1 for greedy): what the trainer recomputes as its
            log-probs, so the two agree up to numerics. ``None`` if not requested.
        sampling_logprobs: Log-prob of each token under the distribution actually sampled from
            (after repetition penalty and top-k / top-p / min-p truncation); 0 for greedy tokens.
            ``None`` if not requested.
        finish_reason: ``"stop"`` (stop token or string) or ``"length"`` (``max_tokens`` or the
            engine's ``max_model_len`` reached).
        weight_versions: The engine's ``weight_version`` (pushes so far) whose weights sampled each
            token; they differ within one completion only when weights arrived mid-generation
            (:class:`InFlightWeights`). ``None`` for engines that do not record it.
    """

    token_ids: list[int]
    logprobs: list[float] | None
    sampling_logprobs: list[float] | None
    finish_reason: FinishReason
    weight_versions: list[int] | None = None


@dataclass(frozen=True)
class EngineGauges:
    """What a rollout engine is doing at this moment; ``None`` where the engine cannot know.

    Read by another thread while ``generate`` runs (the trainer's Prometheus endpoint asks at each
    scrape), so an engine answers from counters it keeps anyway, without touching the device.

    Attributes:
        running: Sequences being decoded now.
        waiting: Sequences queued for a free place in the running batch.
        kv_cache_used_fraction: Share of the KV cache's token capacity holding keys, in [0, 1].
        tokens_per_s: Tokens generated per second over the last few seconds (0 when idle).
    """

    running: int | None = None
    waiting: int | None = None
    kv_cache_used_fraction: float | None = None
    tokens_per_s: float | None = None

    def as_metrics(self) -> dict[str, float]:
        """The known gauges by metric name (``running_seqs``, ``waiting_seqs``, ...), unknown ones left out."""
        named = {
            "running_seqs": self.running,
            "waiting_seqs": self.waiting,
            "kv_cache_used_fraction": self.kv_cache_used_fraction,
            "tokens_per_s": self.tokens_per_s,
        }
        return {name: float(value) for name, value in named.items() if value is not None}


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer and ``rlkit generate`` need from a rollout engine."""

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        *,
        progress: ProgressFn | None = None,
    ) -> list[list[Completion]]:
        """Sample ``params.n`` completions of every prompt.

        Calls may come from a thread other than the one that built the engine (the agent path's
        :class:`~rlkit.rollout.async_batcher.AsyncBatcher` makes them from one engine thread), never
        from two at once: an engine must work, and give the same results, from any thread.

        Args:
            prompt_token_ids: One list of token ids per prompt (no padding).
            params: One set of parameters for all prompts, or one per prompt.
            progress: Optional callback, called as sequences finish.

        Returns:
            One list of ``n`` completions per prompt, in input order.
        """
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights, given by Hugging Face parameter name (as ``CausalLM.state_dict``)."""
        ...

    def sleep(self) -> None:
        """Release the KV cache (colocated mode: the trainer uses the memory meanwhile)."""
        ...

    def wake(self) -> None:
        """Re-allocate what :meth:`sleep` released; outputs are unchanged by a sleep/wake cycle."""
        ...

    def close(self) -> None:
        """Release everything the engine holds on the device."""
        ...

    def gauges(self) -> EngineGauges:
        """The engine's live gauges; cheap, and safe to call from another thread during ``generate``."""
        ...


@runtime_checkable
class InFlightWeights(Protocol):
    """What an engine adds to :class:`RolloutEngine` to take weights in the middle of a generation
    (partial rollouts, ``trainer.partial_rollouts=continue``); optional: the trainer asks for it
    with ``isinstance`` and refuses the setting for engines without it."""

    def update_weights_in_flight(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights from another thread than ``generate``'s, while a generation may run.

        A running generation takes them at its next step boundary (never inside a forward): its
        in-flight sequences keep their tokens, log-probs and weight versions so far, their KV
        cache is recomputed under the new weights, and every later token is sampled from the new
        weights (``Completion.weight_versions`` says which tokens). Without a running generation
        this is ``update_weights``. Returns once the weights are loaded (``weight_version``
        advanced); ``named_tensors`` is consumed on the calling thread.
        """
        ...


def default_stop_ids(eos_token_id: int | list[int] | None, tokenizer: Any | None) -> list[int]:
    """A model's stop tokens: the tokenizer's (eos + end of turn) if given, else the config's eos ids."""
    if tokenizer is not None:
        from rlkit.models.tokenizer import stop_token_ids

        return stop_token_ids(tokenizer)
    if eos_token_id is None:
        return []
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
