"""NVTX ranges for Nsight Systems; no-ops when the ``nvtx`` package is absent or on CPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

try:  # the optional `nvtx` extra; without it ranges cost nothing
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - depends on the environment
    _nvtx = None


@contextmanager
def nvtx_range(name: str, color: str = "blue") -> Iterator[None]:
    """Mark a named range on the NVTX timeline (for `rlkit profile --nsight`)."""
    ctx: Any = _nvtx.annotate(name, color=color) if _nvtx is not None else nullcontext()
    with ctx:
        yield
