"""Shared fixtures of the whole test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

# Ray's workers inherit these; set them before anything imports Ray so every Ray process of the
# test session stays on the loopback address with token auth off and quiet logs.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_SCHEDULER_EVENTS", "0")


# The smallest RL run the end-to-end tests train: 2 steps of 4 prompts x 2 samples, 8 new tokens,
# no validation, metrics to jsonl only.
TINY_RUN = (
    "trainer.total_steps=2",
    "data.batch_size=4",
    "actor.mini_batch_size=4",
    "rollout.n=2",
    "data.max_response_length=8",
    "trainer.val_every=0",
    "data.synthetic_size=64",
    "trainer.loggers=[jsonl]",
)


@pytest.fixture
def tiny_run() -> list[str]:
    """``KEY=VALUE`` overrides of the smallest RL run (:data:`TINY_RUN`), for ``rlkit train`` in tests."""
    return list(TINY_RUN)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test session (4 CPUs, so two 1-CPU workers fit on a 2-core box)."""
    import ray

    from rlkit.controller import start_ray

    started_here = not ray.is_initialized()
    start_ray(None, num_cpus=4)  # joins $RAY_ADDRESS instead when it is set
    yield
    if started_here:
        ray.shutdown()


_INTERPRETER_PROBE = """
import torch, triton, triton.language as tl
@triton.jit
def k(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n, BLOCK):
        acc += tl.load(x_ptr + start + offs, mask=start + offs < n, other=0.0)
    tl.store(out_ptr, tl.sum(acc, 0))
x, out = torch.ones(100), torch.zeros(1)
k[(1,)](x, out, 100, BLOCK=64)
assert out.item() == 100.0
"""


@pytest.fixture(scope="session")
def triton_interpreter() -> None:
    """Skip unless Triton's CPU interpreter (``TRITON_INTERPRET=1``) runs a kernel here.

    Kernel tests run their checks in a subprocess with the interpreter on; some Triton releases'
    interpreters fail with newer NumPy (scalar arguments become 1-element arrays), which is a
    broken tool, not a broken kernel.
    """
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_PROBE], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"Triton's CPU interpreter does not run here: {proc.stderr.strip().splitlines()[-1:]}")
