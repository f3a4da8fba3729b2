"""Helpers behind :meth:`RolloutEngine.gauges`: a recent token rate, and vLLM's own metrics as gauges.

The rates are read by another thread than the one generating (the trainer's Prometheus endpoint
asks at every scrape), hence the lock; both sides hold it for a few list operations only.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from rlkit.rollout.base import EngineGauges

# Seconds of history a recent rate covers.
RATE_WINDOW_S = 2.0


class TokenRate:
    """Tokens per second over the last :data:`RATE_WINDOW_S` seconds, fed by the generating thread."""

    def __init__(self, window_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s, self.clock = window_s, clock
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, tokens: int) -> None:
        """Note ``tokens`` generated just now."""
        if tokens:
            now = self.clock()
            with self._lock:
                self._events.append((now, tokens))
                self._trim(now)

    def per_s(self) -> float:
        """Tokens of the last window divided by its length (0 after a window without tokens)."""
        now = self.clock()
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._events) / self.window_s

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()


class CounterRate:
    """The rate of a monotonic counter read now and then (vLLM's generated-token counter).

    Each reading is compared with the oldest one of the last :data:`RATE_WINDOW_S` seconds, so a
    scrape every second and one every ten both get a rate over what they last saw.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s, self.clock = window_s, clock
        self._readings: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def per_s(self, total: float) -> float:
        """The counter's rate, given its value now (0 on the first reading)."""
        now = self.clock()
        with self._lock:
            self._readings.append((now, total))
            while len(self._readings) > 2 and self._readings[1][0] <= now - self.window_s:
                self._readings.popleft()
            then, before = self._readings[0]
        if now <= then or total < before:  # the first reading, or the counter was reset
            return 0.0
        return (total - before) / (now - then)


# vLLM's metric names (the in-process registry and a server's /metrics say the same).
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_KV_USAGE = "vllm:kv_cache_usage_perc"
VLLM_GENERATED = "vllm:generation_tokens"

_SAMPLE = re.compile(r"^(vllm:[A-Za-z0-9_:]+?)(?:_total)?(?:\{[^}]*\})?\s+(\S+)")


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """``{name: value}`` of every ``vllm:`` sample of a Prometheus text page, summed over labels.

    Counters lose their ``_total`` suffix, so the names match ``LLM.get_metrics()``.
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        if found:
            try:
                value = float(found.group(2))
            except ValueError:
                continue
            values[found.group(1)] = values.get(found.group(1), 0.0) + value
    return values


def vllm_gauges(values: Mapping[str, float], rate: CounterRate) -> EngineGauges:
    """vLLM's scheduler gauges and generated-token counter as :class:`EngineGauges`.

    Samples of several label sets (data-parallel engines) arrive summed, so the KV-cache use is
    vLLM's own for one engine (what rlkit starts) and is clamped to 1 otherwise.
    """
    generated = values.get(VLLM_GENERATED)
    running, waiting = values.get(VLLM_RUNNING), values.get(VLLM_WAITING)
    usage = values.get(VLLM_KV_USAGE)
    return EngineGauges(
        running=None if running is None else int(running),
        waiting=None if waiting is None else int(waiting),
        kv_cache_used_fraction=None if usage is None else min(max(usage, 0.0), 1.0),
        tokens_per_s=None if generated is None else rate.per_s(generated),
    )
