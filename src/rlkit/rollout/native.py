"""The native rollout engine: KV cache, continuous batching, shared prefill, CUDA-graph decode.

How one ``generate`` call runs:

1. Every prompt becomes a group of ``n`` samples in the scheduler's waiting queue.
2. When slots are free, groups are admitted: their prompts are prefilled together (packed, no
   padding) ONCE per group, the keys/values are written into each sample's slot, and the first
   token of every sample is drawn independently from the shared last-token logits.
3. A decode step runs one token for every slot 0..B-1 (B the smallest captured bucket covering the
   running slots): a CUDA-graph replay on GPU, eager elsewhere. Sampling runs on the device and
   writes the next input tokens in place, so the host never feeds tokens back.
4. Results travel to pinned host memory asynchronously. On GPU the host handles step t's tokens
   (stop tokens and strings, finishing, freeing slots, admitting new groups) while step t+1 already
   runs; a sequence that stopped at step t therefore computes one discarded extra token. Sequences
   that reach ``max_tokens`` are taken out before that step is launched.

Weights pushed while a generation runs (:meth:`NativeEngine.update_weights_in_flight`) load between
two steps; the running sequences' KV cache is then recomputed, so each token is one policy's.

Sampling: where Triton runs and no row of a step needs truncation (top-k/p, min-p) or a repetition
penalty, the fused kernels of :mod:`rlkit.rollout.sampling_kernel` sample every row with one read
of the logits, each draw keyed by the sequence and the position; otherwise
:func:`~rlkit.rollout.sampling.sample_tokens` runs in fp32 with noise from generators.

Determinism: with ``SamplingParams.seed`` each sample has its own noise stream (fixed by the request
seed, the prompt's tokens and the sample index), so its tokens depend only on its prompt, parameters
and the weights, not on what else is in the batch, as long as the logits themselves are
batch-invariant: on CPU they are; on GPU, matmul kernels may change with the batch size and flip a
near-tie. Without a seed, each sequence's stream is drawn from torch's default generators.

Memory: the KV cache (``max_num_seqs`` slots of ``max_model_len`` tokens, or fewer slots if the
budget ``kv_cache_tokens`` says so) plus one logits row per slot in the model's dtype. ``sleep``
frees both (and the captured graphs, which point into them); weights stay where they are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from collections.abc import Sequence as Sequence_
from dataclasses import dataclass
from typing import Any

import torch

from rlkit import hardware
from rlkit.errors import UserError
from rlkit.hardware.kernels import use_triton
from rlkit.models.decoder import CausalLM
from rlkit.rollout.base import Completion, EngineGauges, ProgressFn, SamplingParams, default_stop_ids
from rlkit.rollout.forward import decode_forward, pack_contexts, prefill_forward, refill_slots
from rlkit.rollout.fused import FusedLayer, fuse_layers
from rlkit.rollout.gauges import TokenRate
from rlkit.rollout.graphs import DecodeGraphs, HostCopy, batch_buckets, bucket_for, to_device
from rlkit.rollout.inflight import WeightMailbox
from rlkit.rollout.kv_cache import KVCache
from rlkit.rollout.rows import check_prompts, params_per_prompt, row_noise, stop_ids, text_decoder
from rlkit.rollout.sampling import RowParams, sample_tokens
from rlkit.rollout.scheduler import Scheduler, Sequence
from rlkit.rollout.weight_sync import (
    Checksums,
    VersionedWeights,
    WeightLedger,
    checksum_names,
    copy_weights,
    land_push,
    module_checksums,
)

# Without an explicit budget, a GPU cache may take this fraction of the free device memory.
DEFAULT_MEMORY_FRACTION = 0.5
# Sampling holds a few fp32 (rows, vocab) temporaries besides the logits buffer; budgeted per slot.
_LOGIT_ROWS_PER_SLOT = 6
# Without max_model_len the cache grows to the longest prompt + max_tokens, rounded up to this.
_LEN_ROUNDING = 64


@dataclass
class EngineStats:
    """Counters since the engine was built (the tests use them to check prefill sharing)."""

    prefill_calls: int = 0
    prefill_tokens: int = 0
    decode_steps: int = 0
    decode_rows: int = 0
    generated_tokens: int = 0
    graph_replays: int = 0


@dataclass
class _Buffers:
    """Per-slot device state: the next input token and its position, sampling parameters (``keys``:
    each sequence's random stream for the fused sampler), and the last logits in the model's dtype."""

    tokens: torch.Tensor
    positions: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    repetition_penalty: torch.Tensor
    keys: torch.Tensor
    logits: torch.Tensor
    seen: torch.Tensor | None = None


@dataclass
class _Record:
    """A launched step: its results on their way to the host, and the weights' version that ran it."""

    rows: list[Sequence | None]
    results: HostCopy
    version: int


class NativeEngine(VersionedWeights):
    """Rollout engine over a native ``CausalLM`` (llama / qwen2 / qwen3 family).

    Args:
        model: The model; its weights are used in place (``update_weights`` copies into them).
        device: Where to run (default: where the model is); the model is moved there.
        max_num_seqs: Most sequences decoded together (KV-cache slots).
        max_model_len: Longest prompt + completion. None: grow the cache to what each ``generate``
            call needs (the longest prompt + ``max_tokens``, rounded up to 64).
        kv_cache_tokens: KV-cache budget: an int is a number of tokens, a float in (0, 1] a
            fraction of the device's free memory (ignored on CPU); None means ``max_num_seqs``
            full slots on CPU and half the free memory on a GPU. Fewer slots than ``max_num_seqs`` fit a small budget.
        cuda_graphs: Capture the decode step in CUDA graphs (CUDA only; ignored elsewhere).
        tokenizer: Needed for stop strings; also supplies the default stop tokens (eos + the
            end-of-turn token of chat templates). Without it the model config's eos ids are used.
        max_prefill_tokens: Prompt tokens prefilled in one forward (a longer prompt goes alone).
    """

    def __init__(
        self,
        model: CausalLM,
        *,
        device: str | torch.device | None = None,
        max_num_seqs: int = 256,
        max_model_len: int | None = None,
        kv_cache_tokens: int | float | None = None,
        cuda_graphs: bool = True,
        tokenizer: Any | None = None,
        max_prefill_tokens: int = 8192,
    ) -> None:
        if not isinstance(model, CausalLM):
            raise TypeError(f"NativeEngine needs a native rlkit CausalLM, got {type(model).__name__}")
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.dtype = next(model.parameters()).dtype
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.kv_cache_tokens = kv_cache_tokens
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self.tokenizer = tokenizer
        self.max_prefill_tokens = max_prefill_tokens
        self.default_stop_ids = default_stop_ids(model.config.eos_token_id, tokenizer)
        self.stats = EngineStats()
        self.ledger = WeightLedger()
        self._mailbox = WeightMailbox()
        self._checked = checksum_names(self.model.state_dict(), linear=True)  # it holds them as pushed
        self._rate = TokenRate()
        self._sched: Scheduler | None = None  # the running generate call's, for gauges()
        self._cache: KVCache | None = None
        self._buf: _Buffers | None = None
        self._graphs: DecodeGraphs | None = None
        self._fused: list[FusedLayer] = []
        self._weights_key: tuple[int, ...] = ()
        self._cache_len = 0
        self._asleep = False
        # On an accelerator the host handles a step's results while the next one runs.
        self._pipeline_depth = 0 if self.device.type == "cpu" else 1

    @staticmethod
    def unsupported_reason(hf_config: dict[str, Any]) -> str | None:
        """Why the native decoder cannot run a ``config.json`` (None: a Llama / Qwen-family model)."""
        from rlkit.models import native_unsupported_reason

        return native_unsupported_reason(hf_config)

    @staticmethod
    def version() -> str:
        """The engine's version: it is built into rlkit."""
        import rlkit

        return f"built in (rlkit {rlkit.__version__})"

    # ------------------------------------------------------------------ public interface

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        *,
        progress: ProgressFn | None = None,
    ) -> list[list[Completion]]:
        """Sample ``n`` completions per prompt; one list per prompt, in input order.

        Raises:
            UserError: a prompt does not fit ``max_model_len``.
            ValueError: empty prompts, token ids outside the vocabulary, stop strings without a
                tokenizer, or a mismatched number of parameter sets.
            RuntimeError: the engine is asleep.
        """
        if self._asleep:
            raise RuntimeError("the rollout engine is asleep: call wake() before generate()")
        per_prompt = params_per_prompt(prompt_token_ids, params)
        if not prompt_token_ids:
            return []
        check_prompts(
            prompt_token_ids,
            per_prompt,
            vocab=self.config.vocab_size,
            has_tokenizer=self.tokenizer is not None,
            max_model_len=self.max_model_len,
        )
        needed = max(len(p) + sp.max_tokens for p, sp in zip(prompt_token_ids, per_prompt, strict=True))
        with torch.no_grad():
            self._ensure_cache(needed)
            try:
                with self._mailbox.generating():
                    return self._run(prompt_token_ids, per_prompt, progress)
            finally:
                self._sched = None

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy weights into the model in place, by Hugging Face name; bumps :attr:`weight_version`.

        Raises:
            ValueError: an unknown name or a shape that does not match.
            WeightSyncError: the push left a parameter out, or the read-back differs (:func:`land_push`).
        """
        land_push(self, *copy_weights(self.model, named_tensors, self._checked))

    def update_weights_in_flight(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """:class:`~rlkit.rollout.base.InFlightWeights`: load at the next step boundary of a running
        generation (its in-flight sequences' KV cache is then recomputed), or now if none runs.

        The tensors are gathered on the calling thread (a Ray object-store stream reads there), and
        copied in by the generating thread, which owns the model's device stream meanwhile.
        """
        tensors = list(named_tensors)
        self._mailbox.deliver(lambda: self.update_weights(tensors))

    def weights_checksum(self) -> Checksums:
        """The checksums of a few parameters of the model this engine runs."""
        return module_checksums(self.model, self._checked)

    def sleep(self) -> None:
        """Free the KV cache, the logits buffer and the captured graphs (weights stay)."""
        self._release()
        self._asleep = True

    def wake(self) -> None:
        """Re-allocate the cache (and re-capture graphs) at the size it had before :meth:`sleep`."""
        if self._asleep and self._cache_len:
            with torch.no_grad():
                self._allocate(self._cache_len)
        self._asleep = False

    def close(self) -> None:
        self._release()

    def gauges(self) -> EngineGauges:
        """Running and waiting samples of the current ``generate`` call, and the share of the cache's
        tokens (slots x max_len) that hold keys: a slot reserves ``max_len`` tokens whatever its
        sequence's length, so this is below ``running / slots`` when sequences are short."""
        sched, cache = self._sched, self._cache
        used = 0.0
        if sched is not None and cache is not None:
            used = min(1.0, sched.cached_tokens() / (cache.num_slots * cache.max_len))
        return EngineGauges(
            running=sched.num_running if sched is not None else 0,
            waiting=sched.num_waiting if sched is not None else 0,
            kv_cache_used_fraction=used,
            tokens_per_s=self._rate.per_s(),
        )

    @property
    def num_slots(self) -> int:
        """KV-cache slots currently allocated (0 before the first ``generate`` or while asleep)."""
        return self._cache.num_slots if self._cache is not None else 0

    # ------------------------------------------------------------------ the generation loop

    def _run(
        self, prompts: list[list[int]], per_prompt: list[SamplingParams], progress: ProgressFn | None
    ) -> list[list[Completion]]:
        assert self._cache is not None
        sched = Scheduler(self._cache.num_slots, self.max_prefill_tokens, self.device)
        for i, (prompt, sp) in enumerate(zip(prompts, per_prompt, strict=True)):
            max_new = min(sp.max_tokens, self._cache.max_len - len(prompt))
            sched.add(i, list(prompt), sp, max_new, stop_ids(sp, self.default_stop_ids))
        self._sched = sched
        results: list[list[Completion | None]] = [[None] * sp.n for sp in per_prompt]
        tally = [0, 0]  # finished sequences, generated tokens
        pending: deque[_Record] = deque()
        while sched.has_work():
            if self._mailbox.has_mail:  # new weights: every launched step lands first, then they load
                while pending:
                    self._consume(pending.popleft(), sched, results, tally)
                if self._mailbox.take():
                    self._recompute_cache(sched)
                continue  # the drained steps may have finished the last sequences
            launched = False
            groups = sched.admit()
            if groups:
                pending.append(self._prefill(groups))
                launched = True
            rows = sched.decode_rows()
            if rows:
                pending.append(self._decode(rows))
                launched = True
            if not launched and not pending:
                raise AssertionError("scheduler has work but nothing to run")
            keep = self._pipeline_depth if launched else 0
            while len(pending) > keep:
                self._consume(pending.popleft(), sched, results, tally)
                if progress is not None:
                    progress(tally[0], tally[1])
        while pending:
            self._consume(pending.popleft(), sched, results, tally)
        if progress is not None:
            progress(tally[0], tally[1])
        assert all(c is not None for group in results for c in group)
        return results  # type: ignore[return-value]

    def _recompute_cache(self, sched: Scheduler) -> None:
        """Rewrite the keys/values of every running sequence (its prompt and all its tokens but the
        last, which the next decode step feeds) with the weights just loaded: kept, they would mix
        both policies (docs/async.md, partial rollouts)."""
        assert self._cache is not None
        contexts = [(seq.slot, seq.prompt + seq.tokens[:-1]) for seq in sched.slots if seq is not None]
        for chunk in pack_contexts(contexts, self.max_prefill_tokens):
            self.stats.prefill_tokens += refill_slots(self.model, self._cache, chunk, self.device)
            self.stats.prefill_calls += 1

    def _prefill(self, groups: list[tuple[list[int], list[Sequence]]]) -> _Record:
        """Prefill each group's prompt once, fill all its slots, sample every sample's first token."""
        assert self._cache is not None and self._buf is not None
        ids: list[int] = []
        positions: list[int] = []
        cu = [0]
        rows: list[Sequence] = []
        row_group: list[int] = []
        for g, (prompt, seqs) in enumerate(groups):
            ids.extend(prompt)
            positions.extend(range(len(prompt)))
            cu.append(len(ids))
            rows.extend(seqs)
            row_group.extend([g] * len(seqs))
        dev = self.device
        ids_T = to_device(ids, torch.long, dev)
        cu_t = to_device(cu, torch.int32, dev)
        row_len = to_device([len(s.prompt) for s in rows], torch.long, dev)
        row_start = to_device([cu[g] for g in row_group], torch.long, dev)
        slots = to_device([s.slot for s in rows], torch.long, dev)
        num_rows = sum(len(s.prompt) for s in rows)
        # For every (sample, prompt token): which packed token, and which cache position it fills.
        row_of = torch.repeat_interleave(torch.arange(len(rows), device=dev), row_len, output_size=num_rows)
        row_first = torch.cumsum(row_len, 0) - row_len
        within = torch.arange(num_rows, device=dev) - row_first.index_select(0, row_of)
        src = row_start.index_select(0, row_of) + within
        dest = slots.index_select(0, row_of) * self._cache.max_len + within
        last = cu_t[1:].long() - 1
        max_len = max(len(prompt) for prompt, _ in groups)
        logits = prefill_forward(
            self.model,
            self._cache,
            ids_T,
            to_device(positions, torch.long, dev),
            cu_t,
            max_len,
            dest,
            src,
            last,
        )
        self._set_slot_params(rows, slots)
        if self._buf.seen is not None:
            self._buf.seen.index_fill_(0, slots, False)
            flat = slots.index_select(0, row_of) * self.config.vocab_size + ids_T.index_select(0, src)
            self._buf.seen.view(-1).index_fill_(0, flat, True)
        logits_R = logits.index_select(0, to_device(row_group, torch.long, dev))
        tokens, logprobs, sampling = self._sample(logits_R, rows, slots, row_len - 1)
        self._buf.tokens.index_copy_(0, slots, tokens)
        self._buf.positions.index_copy_(0, slots, row_len)
        if self._buf.seen is not None:
            self._buf.seen.view(-1).index_fill_(0, slots * self.config.vocab_size + tokens, True)
        for seq in rows:
            seq.launched = 1
        self.stats.prefill_calls += 1
        self.stats.prefill_tokens += len(ids)
        return _Record(list(rows), HostCopy([tokens, logprobs, sampling]), self.weight_version)

    def _decode(self, rows: list[Sequence | None]) -> _Record:
        """One decode step for slots 0..B-1 (graph replay on GPU), then sampling on the device."""
        assert self._cache is not None and self._buf is not None
        buf = self._buf
        if self._graphs is not None:
            b = bucket_for(len(rows), self._graphs.buckets)
            self._graphs.replay(b)
            self.stats.graph_replays += 1
        else:
            b = len(rows)
            longest = max(seq.position + 1 for seq in rows if seq is not None)
            self._graph_step(b, min(self._cache.max_len, -(-longest // _LEN_ROUNDING) * _LEN_ROUNDING))
        rows = rows + [None] * (b - len(rows))
        tokens, logprobs, sampling = self._sample(buf.logits[:b], rows, slice(0, b), buf.positions[:b])
        buf.tokens[:b].copy_(tokens)
        buf.positions[:b] += 1
        if buf.seen is not None:
            buf.seen[:b].scatter_(1, tokens[:, None], True)
        for seq in rows:
            if seq is not None:
                seq.launched += 1
        self.stats.decode_steps += 1
        self.stats.decode_rows += b
        return _Record(rows, HostCopy([tokens, logprobs, sampling]), self.weight_version)

    def _sample(
        self,
        logits_RV: torch.Tensor,
        rows: Sequence_[Sequence | None],
        slots: torch.Tensor | slice,
        positions_R: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample the next token of each row (idle rows included) from its logits.

        Rows that need neither truncation nor a repetition penalty (the RL case) go through the
        fused Triton sampler where it runs, its draw keyed by each sequence's key and the
        position fed; otherwise through :func:`sample_tokens` in fp32 with generator noise.
        """
        assert self._buf is not None
        buf = self._buf
        params = self._row_params([seq for seq in rows if seq is not None], slots)
        if params.temperature_only and use_triton(self.device):
            from rlkit.rollout.sampling_kernel import fused_sample

            keys = buf.keys[slots] if isinstance(slots, slice) else buf.keys.index_select(0, slots)
            return fused_sample(logits_RV, params.temperature, keys, positions_R)
        return sample_tokens(logits_RV.float(), params, row_noise(rows, self.config.vocab_size, self.device))

    def _consume(
        self, record: _Record, sched: Scheduler, results: list[list[Completion | None]], tally: list[int]
    ) -> None:
        tokens, logprobs, sampling = record.results.get()
        decode = text_decoder(self.tokenizer)
        appended = 0
        for seq, token, logprob, sampling_logprob in zip(
            record.rows, tokens, logprobs, sampling, strict=True
        ):
            if seq is None or seq.finish_reason is not None:
                continue  # an idle slot, or the extra step of a sequence that already stopped
            seq.append(token, logprob, sampling_logprob, decode, record.version)
            appended += 1
            if seq.finish_reason is not None:
                sched.release(seq)
                results[seq.request][seq.sample] = seq.completion()
                tally[0] += 1
        tally[1] += appended
        self.stats.generated_tokens += appended
        self._rate.add(appended)

    # ------------------------------------------------------------------ sampling state

    def _set_slot_params(self, rows: list[Sequence], slots: torch.Tensor) -> None:
        assert self._buf is not None
        buf, dev = self._buf, self.device
        buf.temperature.index_copy_(
            0, slots, to_device([s.params.temperature for s in rows], torch.float32, dev)
        )
        buf.top_k.index_copy_(0, slots, to_device([s.params.top_k for s in rows], torch.long, dev))
        buf.top_p.index_copy_(0, slots, to_device([s.params.top_p for s in rows], torch.float32, dev))
        buf.min_p.index_copy_(0, slots, to_device([s.params.min_p for s in rows], torch.float32, dev))
        buf.keys.index_copy_(0, slots, to_device([s.key for s in rows], torch.long, dev))
        penalties = [s.params.repetition_penalty for s in rows]
        buf.repetition_penalty.index_copy_(0, slots, to_device(penalties, torch.float32, dev))
        if buf.seen is None and any(p != 1.0 for p in penalties):
            shape = (buf.tokens.shape[0], self.config.vocab_size)
            buf.seen = torch.zeros(shape, dtype=torch.bool, device=dev)

    def _row_params(self, seqs: list[Sequence], rows: torch.Tensor | slice) -> RowParams:
        """Parameters of the given rows; stages no sequence uses are switched off (None)."""
        assert self._buf is not None
        buf = self._buf

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[rows] if isinstance(rows, slice) else t.index_select(0, rows)

        vocab = self.config.vocab_size
        # Requests usually share one SamplingParams object: decide the stages over distinct ones.
        distinct = list({id(s.params): s.params for s in seqs}.values())
        use_rep = any(p.repetition_penalty != 1.0 for p in distinct)
        return RowParams(
            temperature=pick(buf.temperature),
            top_k=pick(buf.top_k) if any(0 < p.top_k < vocab for p in distinct) else None,
            top_p=pick(buf.top_p) if any(p.top_p < 1.0 for p in distinct) else None,
            min_p=pick(buf.min_p) if any(p.min_p > 0.0 for p in distinct) else None,
            repetition_penalty=pick(buf.repetition_penalty) if use_rep else None,
            seen=pick(buf.seen) if use_rep and buf.seen is not None else None,
            divide=any(p.temperature not in (0.0, 1.0) for p in distinct),
            any_greedy=any(p.greedy for p in distinct),
        )

    # ------------------------------------------------------------------ memory

    def _ensure_cache(self, needed: int) -> None:
        """Allocate (or grow) the cache; re-fuse and re-capture if the weights moved since capture."""
        if self.max_model_len is not None:
            length = self.max_model_len
        else:
            length = max(self._cache_len, -(-needed // _LEN_ROUNDING) * _LEN_ROUNDING)
        if self._cache is None or self._cache.max_len != length:
            self._release()
            self._allocate(length)
        elif self._weights_key != _weights_key(self.model):
            # The model was moved or cast (new parameter storage): graphs point at the old one.
            self._fused = fuse_layers(self.model)
            self._weights_key = _weights_key(self.model)
            if self._graphs is not None:
                self._graphs = DecodeGraphs(self._graph_step, self._graphs.buckets, self.device)

    def _allocate(self, max_len: int) -> None:
        cfg = self.config
        self._fused = fuse_layers(self.model)
        self._weights_key = _weights_key(self.model)
        slots = self._plan_slots(max_len)
        self._cache = KVCache.for_model(cfg, slots, max_len, dtype=self.dtype, device=self.device)
        self._cache_len = max_len
        dev = self.device
        self._buf = _Buffers(
            tokens=torch.zeros(slots, dtype=torch.long, device=dev),
            positions=torch.zeros(slots, dtype=torch.long, device=dev),
            temperature=torch.ones(slots, device=dev),
            top_k=torch.full((slots,), -1, dtype=torch.long, device=dev),
            top_p=torch.ones(slots, device=dev),
            min_p=torch.zeros(slots, device=dev),
            repetition_penalty=torch.ones(slots, device=dev),
            keys=torch.zeros(slots, dtype=torch.long, device=dev),
            logits=torch.zeros((slots, cfg.vocab_size), dtype=self.dtype, device=dev),
        )
        if self.use_graphs:
            self._graphs = DecodeGraphs(self._graph_step, batch_buckets(slots), dev)

    def _graph_step(self, b: int, attn_len: int | None = None) -> None:
        """The decode forward of slots 0..b-1 into the logits buffer (what a graph captures).

        ``attn_len`` bounds the cache positions attention reads: eager steps pass the longest
        context rounded up; a captured step reads the whole slot (its kernels stop at each row's
        length on the device).
        """
        assert self._cache is not None and self._buf is not None
        buf = self._buf
        decode_forward(
            self.model,
            self._fused,
            self._cache,
            buf.tokens[:b],
            buf.positions[:b],
            self._cache.max_len if attn_len is None else attn_len,
            logits_out=buf.logits[:b],
        )

    def _plan_slots(self, max_len: int) -> int:
        cfg = self.config
        per_token = KVCache.bytes_per_token(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, self.dtype)
        per_slot = per_token * max_len + _LOGIT_ROWS_PER_SLOT * 4 * cfg.vocab_size
        budget = self.kv_cache_tokens
        if isinstance(budget, int) and not isinstance(budget, bool):
            slots = budget // max_len
        elif self.device.type == "cpu":  # no device memory to take a fraction of
            slots = self.max_num_seqs
        else:
            fraction = DEFAULT_MEMORY_FRACTION if budget is None else float(budget)
            free, _ = hardware.mem_get_info()
            slots = int(fraction * free) // per_slot
        slots = min(slots, self.max_num_seqs)
        if slots < 1:
            raise UserError(
                f"rollout: the KV-cache budget cannot hold one sequence of {max_len} tokens",
                hint="raise the cache budget (kv_cache_tokens / gpu_memory_utilization) or shorten "
                "prompts and max_tokens",
            )
        return slots

    def _release(self) -> None:
        had_cache = self._cache is not None
        self._graphs = None
        self._cache = None
        self._buf = None
        if had_cache:
            hardware.empty_cache()


def _weights_key(model: CausalLM) -> tuple[int, ...]:
    """Addresses of every parameter: captured graphs and fused buffers are valid while these hold."""
    return tuple(p.data_ptr() for p in model.parameters())
