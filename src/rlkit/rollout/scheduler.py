"""Host-side bookkeeping of the native engine: sequences, the waiting queue and the cache slots.

Continuous batching: prompts wait in a queue of groups (a prompt and the samples still to start);
whenever enough slots are free, whole groups (or the part of the head group that fits) are admitted,
prefilled together and join the running batch; a sequence leaves its slot as soon as it finishes.
Slots are handed out lowest first so the running batch stays packed at the front and the decode step
runs on the smallest batch-size bucket that covers it.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rlkit.rollout.base import Completion, FinishReason, SamplingParams

DecodeFn = Callable[[list[int]], str]

# A completion that ended in a stop string is found by decoding this many tokens per stop-string
# character (a character may take up to 4 byte-level tokens), plus a margin.
_TOKENS_PER_CHAR = 4
_STOP_WINDOW_MARGIN = 8


def stream_key(seed: int, prompt: list[int], sample: int) -> int:
    """The 63-bit key of a seeded sample's random stream, fixed by (seed, prompt tokens, sample index).

    The prompt is part of the key so that sample j of two different prompts of one request draws
    different noise (with ``seed * c + sample`` alone they shared a stream, correlating the
    groups of a GRPO batch). A cryptographic hash, not ``hash()``: the same on every process and run.
    """
    digest = hashlib.blake2b(digest_size=8)
    digest.update(struct.pack("<qq", seed, sample))
    digest.update(struct.pack(f"<{len(prompt)}q", *prompt))
    return int.from_bytes(digest.digest(), "little") % (1 << 63)


def sample_stream(
    params: SamplingParams, sample: int, device: torch.device, prompt: list[int]
) -> tuple[torch.Generator | None, int]:
    """The random stream of sample ``sample`` of a request: a generator (seeded, non-greedy) and a key.

    Each sample of a seeded request has its own stream, fixed by (seed, prompt, sample index)
    (:func:`stream_key`): a generator for the PyTorch sampler, a key for the fused sampler.
    Unseeded, the key comes from torch's default generator (so ``torch.manual_seed`` still fixes
    it) and there is no generator.
    """
    seed = params.seed
    if seed is None:
        return None, int(torch.randint(0, 1 << 62, ()))
    key = stream_key(seed, prompt, sample)
    if params.greedy:
        return None, key
    generator = torch.Generator(device=device)
    generator.manual_seed(key)
    return generator, key


@dataclass(eq=False)
class Sequence:
    """One completion being generated (sample ``sample`` of prompt ``request``)."""

    request: int
    sample: int
    prompt: list[int]
    params: SamplingParams
    max_new: int
    stop_ids: frozenset[int]
    generator: torch.Generator | None = None
    key: int = 0
    slot: int = -1
    launched: int = 0
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sampling_logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)  # the engine's weight version of each token
    finish_reason: FinishReason | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def decoding(self) -> bool:
        """Whether another decode step should run for it (results may still be in flight)."""
        return not self.finished and self.launched < self.max_new

    @property
    def position(self) -> int:
        """Position of the token the next decode step feeds (the last launched one)."""
        return len(self.prompt) + self.launched - 1

    def append(
        self, token: int, logprob: float, sampling_logprob: float, decode: DecodeFn | None, version: int = 0
    ) -> None:
        """Record a generated token (sampled with weights ``version``) and decide whether the sequence has finished.

        Called once per sequence and decode step: at a few hundred rows per step this loop is part
        of what the host must finish while the GPU runs the next step, hence no helper calls on
        the common path (no stop strings).
        """
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.sampling_logprobs.append(sampling_logprob)
        self.versions.append(version)
        if token in self.stop_ids or (self.params.stop and self._hit_stop_string(decode)):
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.max_new:
            self.finish_reason = "length"

    def _hit_stop_string(self, decode: DecodeFn | None) -> bool:
        stops = self.params.stop
        if not stops or decode is None:
            return False
        window = _TOKENS_PER_CHAR * max(len(s) for s in stops) + _STOP_WINDOW_MARGIN
        text = decode(self.tokens[-window:])
        return any(s in text for s in stops)

    def completion(self) -> Completion:
        assert self.finish_reason is not None
        want = self.params.logprobs
        return Completion(
            token_ids=list(self.tokens),
            logprobs=list(self.logprobs) if want else None,
            sampling_logprobs=list(self.sampling_logprobs) if want else None,
            finish_reason=self.finish_reason,
            weight_versions=list(self.versions),
        )


@dataclass(eq=False)
class _Group:
    request: int
    prompt: list[int]
    params: SamplingParams
    max_new: int
    stop_ids: frozenset[int]
    samples: deque[int]


class Scheduler:
    """Waiting groups, slot ownership and admission for one ``generate`` call."""

    def __init__(self, num_slots: int, max_prefill_tokens: int, device: torch.device) -> None:
        self.num_slots = num_slots
        self.max_prefill_tokens = max_prefill_tokens
        self.device = device
        self.waiting: deque[_Group] = deque()
        self.slots: list[Sequence | None] = [None] * num_slots
        self.num_waiting = 0  # samples not started yet (read by the engine's gauges from another thread)
        self._free = list(range(num_slots))
        # Admitting costs an eager prefill, so with many slots wait until a few are free at once.
        self.admit_threshold = max(1, num_slots // 16)

    def add(
        self, request: int, prompt: list[int], params: SamplingParams, max_new: int, stop_ids: frozenset[int]
    ) -> None:
        self.waiting.append(_Group(request, prompt, params, max_new, stop_ids, deque(range(params.n))))
        self.num_waiting += params.n

    @property
    def num_running(self) -> int:
        return self.num_slots - len(self._free)

    def has_work(self) -> bool:
        return bool(self.waiting) or self.num_running > 0

    def admit(self) -> list[tuple[list[int], list[Sequence]]]:
        """Groups to prefill now: (prompt, its new sequences with slots assigned), by token budget."""
        free = len(self._free)
        if not self.waiting or free == 0:
            return []
        if self.num_running > 0 and free < min(self.admit_threshold, self.num_waiting):
            return []
        batch: list[tuple[list[int], list[Sequence]]] = []
        tokens = 0
        while self.waiting and self._free:
            group = self.waiting[0]
            if batch and tokens + len(group.prompt) > self.max_prefill_tokens:
                break
            seqs = []
            while group.samples and self._free:
                seqs.append(self._start(group, group.samples.popleft()))
            if not group.samples:
                self.waiting.popleft()
            batch.append((group.prompt, seqs))
            tokens += len(group.prompt)
        return batch

    def cached_tokens(self) -> int:
        """Tokens whose keys the running sequences hold in their slots (prompt + launched tokens)."""
        return sum(len(seq.prompt) + seq.launched for seq in list(self.slots) if seq is not None)

    def _start(self, group: _Group, sample: int) -> Sequence:
        generator, key = sample_stream(group.params, sample, self.device, group.prompt)
        seq = Sequence(
            group.request, sample, group.prompt, group.params, group.max_new, group.stop_ids, generator, key
        )
        seq.slot = heapq.heappop(self._free)
        self.slots[seq.slot] = seq
        self.num_waiting -= 1
        return seq

    def release(self, seq: Sequence) -> None:
        """Free the slot of a finished sequence."""
        assert self.slots[seq.slot] is seq
        self.slots[seq.slot] = None
        heapq.heappush(self._free, seq.slot)

    def decode_rows(self) -> list[Sequence | None]:
        """Sequences of slots 0..k-1 for the next decode step (None: idle slot), k = last active + 1."""
        # Inlined ``Sequence.decoding``: this runs over every slot at every step.
        rows = [
            seq if seq is not None and seq.finish_reason is None and seq.launched < seq.max_new else None
            for seq in self.slots
        ]
        while rows and rows[-1] is None:
            rows.pop()
        return rows
