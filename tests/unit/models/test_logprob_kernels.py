"""The Triton log-prob kernels pass the same value and gradient checks as the PyTorch path.

Triton's CPU interpreter must be switched on before the kernels are imported, so the checks of
``test_token_logprobs.py`` run again in a child pytest with ``TRITON_INTERPRET=1``, where
:func:`rlkit.hardware.kernels.use_triton` routes every chunk through the kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("triton_interpreter")


def test_token_logprobs_checks_pass_through_the_kernels() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "RLKIT_TRITON": "1"}
    here = Path(__file__).parent
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(here / "test_token_logprobs.py"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "passed" in proc.stdout


def test_kernels_are_used_under_the_interpreter() -> None:
    """Guards the test above: under the interpreter the fused chunk functions really run."""
    code = (
        "import torch\n"
        "from rlkit.models import logprobs as L\n"
        "calls = []\n"
        "fwd, bwd = L._chunk_stats_fused, L._chunk_grad_fused\n"
        "L._chunk_stats_fused = lambda *a: (calls.append('f'), fwd(*a))[1]\n"
        "L._chunk_grad_fused = lambda *a: (calls.append('b'), bwd(*a))[1]\n"
        "h = torch.randn(9, 8, requires_grad=True); w = torch.randn(50, 8, requires_grad=True)\n"
        "lp, _ = L.token_logprobs(h, w, torch.randint(0, 50, (9,)), chunk_tokens=4)\n"
        "lp.sum().backward()\n"
        "print(''.join(calls))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "RLKIT_TRITON": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "fffbbb"
