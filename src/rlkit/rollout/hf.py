"""The ``hf`` rollout engine: rlkit's decode loop over any transformers causal LM and its KV cache.

It is the fallback that makes every ``AutoModelForCausalLM`` RL-trainable (Qwen3-MoE, Phi-3,
Gemma-2, Mistral, ...): the model's own ``forward`` with ``past_key_values`` produces the logits
(soft-capping, logit scales and everything else the architecture does included), and rlkit's
sampler (:func:`~rlkit.rollout.sampling.sample_tokens`) draws the tokens, so the sampling semantics
(temperature, top-k/p, min-p, repetition penalty, stop tokens and strings, per-request seeds, both
log-probs) are the native engine's, not ``model.generate``'s.

How one ``generate`` call runs: the samples (prompt x n) are cut into batches of at most
``max_num_seqs`` rows. For each batch the distinct prompts are prefilled once, left-padded, and
their cache rows are repeated for the ``n`` samples; then one token per live row is decoded per step.
Rows that finish leave the batch (their cache rows are dropped), so the batch only shrinks: this is
static batching, not the native engine's continuous batching, and no CUDA graphs. Weights pushed
mid-generation (:meth:`HFEngine.update_weights_in_flight`) load before a decode step, and the live
rows' cache is then recomputed under them, as the native engine does.

Shape legend: B = rows (sequences), P = distinct prompts of a batch, L = padded length, V = vocabulary.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from rlkit import hardware
from rlkit.rollout.base import Completion, EngineGauges, ProgressFn, SamplingParams, default_stop_ids
from rlkit.rollout.gauges import TokenRate
from rlkit.rollout.inflight import WeightMailbox
from rlkit.rollout.native import EngineStats
from rlkit.rollout.rows import check_prompts, params_per_prompt, row_noise, stop_ids, text_decoder
from rlkit.rollout.sampling import RowParams, sample_tokens
from rlkit.rollout.scheduler import Sequence, sample_stream
from rlkit.rollout.weight_sync import (
    Checksums,
    VersionedWeights,
    WeightLedger,
    checksum_names,
    copy_weights,
    land_push,
    module_checksums,
)


def as_transformers_model(model: nn.Module) -> Any:
    """The transformers model behind ``model``: itself, an ``HFCausalLM``'s, or a native model's copy.

    A native ``CausalLM`` (the Llama / Qwen family) is rebuilt as its transformers class from its
    config and given a copy of its weights (the same Hugging Face names).
    """
    from rlkit.models.decoder import CausalLM
    from rlkit.models.hf_fallback import HFCausalLM

    if isinstance(model, HFCausalLM):
        return model.hf
    if isinstance(model, CausalLM):
        from transformers import AutoConfig, AutoModelForCausalLM

        param = next(model.parameters())
        hf_config = AutoConfig.for_model(**model.config.to_hf())
        hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=param.dtype).to(param.device)
        hf_model.load_state_dict(model.state_dict(), strict=False)
        return hf_model.eval()
    if hasattr(model, "config") and hasattr(model, "get_output_embeddings"):
        return model
    raise TypeError(f"the hf engine needs a transformers causal LM, got {type(model).__name__}")


class HFEngine(VersionedWeights):
    """Rollout engine over a transformers causal LM (any architecture ``AutoModelForCausalLM`` loads).

    Args:
        model: A transformers model, an ``HFCausalLM`` (its weights are used in place) or a native
            ``CausalLM`` (copied into its transformers class).
        device: Where to run (default: where the model is); the model is moved there.
        max_num_seqs: Most sequences decoded together.
        max_model_len: Longest prompt + completion (None: no limit but ``max_tokens``).
        kv_cache_tokens: Accepted for the common engine options; the cache grows as needed.
        cuda_graphs: Accepted for the common engine options; this engine runs eagerly.
        tokenizer: Needed for stop strings; also supplies the default stop tokens (eos + the
            end-of-turn token of chat templates). Without it the model config's eos ids are used.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device | None = None,
        max_num_seqs: int = 256,
        max_model_len: int | None = None,
        kv_cache_tokens: int | float | None = None,
        cuda_graphs: bool = False,
        tokenizer: Any | None = None,
    ) -> None:
        del kv_cache_tokens, cuda_graphs  # no preallocated cache, no graphs
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        hf_model = as_transformers_model(model)
        self.device = torch.device(device) if device is not None else next(hf_model.parameters()).device
        self.model = hf_model.to(self.device).eval()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.tokenizer = tokenizer
        generation = getattr(self.model, "generation_config", None)
        eos = getattr(generation, "eos_token_id", None) or getattr(self.model.config, "eos_token_id", None)
        self.default_stop_ids = default_stop_ids(eos, tokenizer)
        self.stats = EngineStats()
        self.ledger = WeightLedger()
        self._mailbox = WeightMailbox()
        self._checked = checksum_names(self.model.state_dict(), linear=True)  # it holds them as pushed
        self._asleep = False
        self._rate = TokenRate()
        # the current generate call's batch and the samples after it, for gauges()
        self._batch: list[Sequence] = []
        self._queued = 0
        # transformers >= 5.2x names the KV cache argument ``cache`` (``past_key_values`` before).
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"

    @staticmethod
    def unsupported_reason(hf_config: dict[str, Any]) -> str | None:
        """Why this engine cannot run a ``config.json`` (None: transformers loads every causal LM)."""
        del hf_config
        return None

    @staticmethod
    def version() -> str:
        """The transformers version this engine runs on (ImportError without transformers)."""
        import transformers

        return f"transformers {transformers.__version__}"

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
        check_prompts(
            prompt_token_ids,
            per_prompt,
            vocab=self.vocab_size,
            has_tokenizer=self.tokenizer is not None,
            max_model_len=self.max_model_len,
        )
        seqs = [
            self._sequence(i, sample, prompt, sp)
            for i, (prompt, sp) in enumerate(zip(prompt_token_ids, per_prompt, strict=True))
            for sample in range(sp.n)
        ]
        tally = [0, 0]
        try:
            with torch.no_grad(), self._mailbox.generating():
                for lo in range(0, len(seqs), self.max_num_seqs):
                    self._batch = seqs[lo : lo + self.max_num_seqs]
                    self._queued = max(0, len(seqs) - lo - self.max_num_seqs)
                    self._run_batch(self._batch, tally, progress)
        finally:
            self._batch, self._queued = [], 0
        results: list[list[Completion]] = [[] for _ in prompt_token_ids]
        for seq in seqs:
            results[seq.request].append(seq.completion())
        return results

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy weights into the model in place, by Hugging Face name; bumps :attr:`weight_version`.

        Raises:
            ValueError: an unknown name or a shape that does not match.
            WeightSyncError: the push left a parameter out, or the read-back differs (:func:`land_push`).
        """
        land_push(self, *copy_weights(self.model, named_tensors, self._checked))

    def update_weights_in_flight(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """:class:`~rlkit.rollout.base.InFlightWeights`: load before the next decode step of a running
        generation (the live rows' KV cache is then recomputed), or now if none runs."""
        tensors = list(named_tensors)  # gathered here: a Ray object-store stream reads on this thread
        self._mailbox.deliver(lambda: self.update_weights(tensors))

    def weights_checksum(self) -> Checksums:
        """The checksums of a few parameters of the model this engine runs."""
        return module_checksums(self.model, self._checked)

    def sleep(self) -> None:
        """Nothing is held between calls but the weights: return cached device memory, refuse work."""
        hardware.empty_cache()
        self._asleep = True

    def wake(self) -> None:
        self._asleep = False

    def close(self) -> None:
        hardware.empty_cache()

    def gauges(self) -> EngineGauges:
        """Unfinished samples of the batch being decoded and those of later batches; the KV cache
        grows with the batch (transformers' own), so it has no share in use to report."""
        batch = self._batch
        return EngineGauges(
            running=sum(not seq.finished for seq in batch),
            waiting=self._queued,
            tokens_per_s=self._rate.per_s(),
        )

    # ------------------------------------------------------------------ the decode loop

    def _sequence(self, request: int, sample: int, prompt: list[int], sp: SamplingParams) -> Sequence:
        max_new = sp.max_tokens
        if self.max_model_len is not None:
            max_new = min(max_new, self.max_model_len - len(prompt))
        generator, key = sample_stream(sp, sample, self.device, prompt)
        stops = stop_ids(sp, self.default_stop_ids)
        return Sequence(request, sample, list(prompt), sp, max_new, stops, generator, key)

    def _run_batch(self, rows: list[Sequence], tally: list[int], progress: ProgressFn | None) -> None:
        """Prefill the batch's distinct prompts once, then decode until every row has finished."""
        logits_BV, cache, mask_BL = self._prefill(rows)
        seen_BV = self._seen(rows) if any(s.params.repetition_penalty != 1.0 for s in rows) else None
        while True:
            tokens_B = self._sample_step(logits_BV, rows, seen_BV, tally)
            if progress is not None:
                progress(tally[0], tally[1])
            alive = [i for i, seq in enumerate(rows) if not seq.finished]
            if not alive:
                return
            if len(alive) < len(rows):
                keep = torch.tensor(alive, device=self.device)
                cache.batch_select_indices(keep)
                rows = [rows[i] for i in alive]
                tokens_B, mask_BL = tokens_B[keep], mask_BL[keep]
                seen_BV = seen_BV[keep] if seen_BV is not None else None
            if self._mailbox.has_mail and self._mailbox.take():
                # keys/values of the old weights would mix both policies: recompute them (docs/async.md)
                _, cache, mask_BL = self._forward_padded([s.prompt + s.tokens[:-1] for s in rows])
            mask_BL = torch.cat([mask_BL, mask_BL.new_ones((len(rows), 1))], dim=1)
            positions = torch.tensor([len(s.prompt) + len(s.tokens) - 1 for s in rows], device=self.device)
            out = self.model(
                input_ids=tokens_B[:, None],
                attention_mask=mask_BL,
                position_ids=positions[:, None],
                use_cache=True,
                **{self._cache_arg: cache},
            )
            logits_BV = out.logits[:, -1, :].float()
            self.stats.decode_steps += 1
            self.stats.decode_rows += len(rows)

    def _prefill(self, rows: list[Sequence]) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Last-token logits (B, V) fp32 of every row, its KV cache, and the attention mask (B, L)."""
        requests = list(dict.fromkeys(seq.request for seq in rows))
        prompts = {seq.request: seq.prompt for seq in rows}
        logits_PV, cache, mask_PL = self._forward_padded([prompts[r] for r in requests])
        row_of = torch.tensor([requests.index(seq.request) for seq in rows], device=self.device)
        cache.batch_select_indices(row_of)  # the n samples of a prompt share its prefill
        return logits_PV.index_select(0, row_of), cache, mask_PL.index_select(0, row_of)

    def _forward_padded(self, contexts: list[list[int]]) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """One left-padded forward of ``contexts``: last-token logits (P, V) fp32, a fresh KV cache
        holding them, and their attention mask (P, L)."""
        from transformers import DynamicCache

        width = max(len(context) for context in contexts)
        ids_PL = torch.zeros((len(contexts), width), dtype=torch.long)
        mask_PL = torch.zeros((len(contexts), width), dtype=torch.long)
        for p, context in enumerate(contexts):  # left padding: every context ends at the last column
            ids_PL[p, width - len(context) :] = torch.tensor(context)
            mask_PL[p, width - len(context) :] = 1
        ids_PL, mask_PL = ids_PL.to(self.device), mask_PL.to(self.device)
        position_PL = (mask_PL.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids_PL,
            attention_mask=mask_PL,
            position_ids=position_PL,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        self.stats.prefill_calls += 1
        self.stats.prefill_tokens += int(mask_PL.sum())
        return out.logits[:, -1, :].float(), cache, mask_PL

    def _seen(self, rows: list[Sequence]) -> torch.Tensor:
        """(B, V) bool: the prompt tokens of each row (for the repetition penalty)."""
        seen = torch.zeros((len(rows), self.vocab_size), dtype=torch.bool, device=self.device)
        for i, seq in enumerate(rows):
            seen[i, torch.tensor(seq.prompt, device=self.device)] = True
        return seen

    def _sample_step(
        self, logits_BV: torch.Tensor, rows: list[Sequence], seen_BV: torch.Tensor | None, tally: list[int]
    ) -> torch.Tensor:
        """Sample one token per row, append it to its sequence; returns the tokens (B,)."""
        tokens_B, logprobs_B, sampling_B = sample_tokens(
            logits_BV,
            _row_params(rows, seen_BV, self.vocab_size, self.device),
            row_noise(rows, self.vocab_size, self.device),
        )
        if seen_BV is not None:
            seen_BV.scatter_(1, tokens_B[:, None], True)
        decode = text_decoder(self.tokenizer)
        for seq, token, lp, slp in zip(
            rows, tokens_B.tolist(), logprobs_B.tolist(), sampling_B.tolist(), strict=True
        ):
            seq.append(token, lp, slp, decode, self.weight_version)
            tally[0] += seq.finished
        tally[1] += len(rows)
        self.stats.generated_tokens += len(rows)
        self._rate.add(len(rows))
        return tokens_B


def _row_params(
    rows: list[Sequence], seen_BV: torch.Tensor | None, vocab: int, device: torch.device
) -> RowParams:
    """Per-row sampling parameters; stages no row uses are off (None), as the native engine does."""

    def column(values: list[Any], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    ps = [seq.params for seq in rows]
    use_rep = any(p.repetition_penalty != 1.0 for p in ps)
    return RowParams(
        temperature=column([p.temperature for p in ps], torch.float32),
        top_k=column([p.top_k for p in ps], torch.long) if any(0 < p.top_k < vocab for p in ps) else None,
        top_p=column([p.top_p for p in ps], torch.float32) if any(p.top_p < 1.0 for p in ps) else None,
        min_p=column([p.min_p for p in ps], torch.float32) if any(p.min_p > 0.0 for p in ps) else None,
        repetition_penalty=column([p.repetition_penalty for p in ps], torch.float32) if use_rep else None,
        seen=seen_BV if use_rep else None,
        divide=any(p.temperature not in (0.0, 1.0) for p in ps),
        any_greedy=any(p.greedy for p in ps),
    )
