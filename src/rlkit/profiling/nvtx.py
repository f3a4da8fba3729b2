"""Named ranges for profilers: NVTX for Nsight Systems, ``record_function`` for torch-profiler traces.

Both cost next to nothing unless something records: NVTX ranges go through the ``nvtx``
package when it is installed, else through torch's built-in NVTX bindings on a CUDA/ROCm
machine (via the device layer), else nowhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rlkit.hardware import capture

try:  # the optional `nvtx` extra (colours, domains); without it torch's own bindings are used
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - depends on the environment
    _nvtx = None


@contextmanager
def nvtx_range(name: str, color: str = "blue") -> Iterator[None]:
    """Mark a named range on the NVTX timeline (for `rlkit profile --nsight`).

    The device is looked up at the first call, not at import: a worker pins its visible devices
    after importing this module.
    """
    if _nvtx is not None:
        with _nvtx.annotate(name, color=color):
            yield
        return
    capture.nvtx_push(name)
    try:
        yield
    finally:
        capture.nvtx_pop()


@contextmanager
def trace_range(name: str, color: str = "green") -> Iterator[None]:
    """An NVTX range that also labels torch-profiler traces (``record_function``).

    Used around every worker method (``role.method``), so both Nsight and torch traces show
    which controller call a kernel belongs to. The label is always entered: a profiler started
    on another thread of the process records this thread too, but does not show as enabled
    here, and the label costs microseconds against calls that take milliseconds or more.
    """
    with nvtx_range(name, color), torch.profiler.record_function(name):
        yield
