"""The timed loop the small benchmarks share: the median of repeated calls after warm-up calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from rlkit.hardware import device as hw


def median_seconds(fn: Callable[[], object], repeats: int, *, warmup: int = 1, sync: bool = False) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones.

    With ``sync``, each call is timed from and to a device synchronize (work launched on an
    accelerator is counted, not just its launch).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            hw.synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            hw.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
