"""Test-only shims that let Megatron-core run on the CPU with gloo (the product never patches Megatron).

Megatron-core assumes CUDA in a few places that have CPU equivalents: it places tensors on
``torch.cuda.current_device()`` (the rotary frequencies, communication buffers) or on ``"cuda"``
(the pipeline schedule's token counter), synchronises CUDA, moves a tensor with ``.cuda()`` and
keeps its RNG-tracker states with ``torch.cuda`` RNG calls. Here those calls are redirected to the CPU for
the duration of a test; nothing else of Megatron is changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch


@contextmanager
def megatron_on_cpu(seed: int = 0) -> Iterator[None]:
    """Redirect Megatron's CUDA device and RNG calls to the CPU and seed its RNG tracker.

    Where CUDA is present the roles train there, which these CPU tests do not cover: they skip,
    and tests/gpu/training/test_megatron_gpu.py runs the engine on the GPU unpatched.
    """
    from megatron.core.tensor_parallel import random as mrandom

    if torch.cuda.is_available():
        pytest.skip("the Megatron CPU tests run on CPU-only machines (the GPU tests cover CUDA)")

    mp = pytest.MonkeyPatch()
    mp.setattr(torch.cuda, "current_device", lambda: "cpu")
    # the pipeline schedule: a token counter made on "cuda", a sync after the shape exchange, and
    # the last stage's copy of a tied embedding moved with .cuda() before its first all-reduce
    mp.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    mp.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    zeros = torch.zeros
    mp.setattr(
        torch,
        "zeros",
        lambda *a, **k: zeros(*a, **{**k, "device": "cpu"} if k.get("device") == "cuda" else k),
    )
    mp.setattr(torch.cuda, "get_rng_state", lambda *a, **k: torch.get_rng_state())
    mp.setattr(torch.cuda, "manual_seed", lambda s: None)
    mp.setattr(mrandom, "_get_cuda_rng_state", lambda *a, **k: torch.get_rng_state())
    mp.setattr(mrandom, "_set_cuda_rng_state", lambda state, *a, **k: torch.set_rng_state(state))
    try:
        tracker = mrandom.get_cuda_rng_tracker()
        tracker.reset()
        tracker.add("model-parallel-rng", seed)
        yield
    finally:
        mp.undo()


def reset_megatron() -> None:
    """Tear Megatron's parallel state down so the next test builds its own."""
    from megatron.core import parallel_state as mpu

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()


def megatron_version() -> tuple[int, int]:
    """(major, minor) of the installed megatron-core."""
    from importlib.metadata import version

    major, minor = version("megatron-core").split(".")[:2]
    return int(major), int(minor)
