"""Stage timers: ``timing/<stage>_s`` for every stage of a step, always on.

Each stage is also an NVTX range (``rlkit.profiling.nvtx``), so an Nsight capture shows the same
stages that ``metrics.jsonl`` times.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rlkit.profiling.nvtx import nvtx_range


class StageTimer:
    """Accumulates wall-clock seconds per stage; ``metrics()`` returns and resets them."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        with nvtx_range(stage):
            yield
        self._seconds[stage] = self._seconds.get(stage, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        out = {f"timing/{stage}_s": seconds for stage, seconds in self._seconds.items()}
        self._seconds = {}
        return out
