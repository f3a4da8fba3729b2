"""Whether rlkit's hand-written Triton kernels may run on a device.

The kernels (fused log-probs in :mod:`rlkit.models.logprob_kernels`, the decode step's fused
elementwise work in :mod:`rlkit.rollout.kernels`) are optional speed-ups: every caller keeps a plain
PyTorch path, which is what runs on the CPU, without Triton, or with ``RLKIT_TRITON=0`` (for A/B
timings and for ruling the kernels out when chasing a numerical difference). Under Triton's CPU
interpreter (``TRITON_INTERPRET=1``, set before the kernels are imported) they run on CPU tensors,
which is how the CPU tests check them against the PyTorch path.
"""

from __future__ import annotations

import os
from functools import cache

import torch


@cache
def triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(device: torch.device) -> bool:
    """True when the Triton kernels should run for tensors on ``device``."""
    if os.environ.get("RLKIT_TRITON", "1") == "0" or not triton_installed():
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device.type == "cuda"
