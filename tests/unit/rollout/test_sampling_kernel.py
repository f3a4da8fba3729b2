"""The fused Triton sampler under Triton's CPU interpreter (checks in ``_sampling_kernel_check.py``)."""

from __future__ import annotations

import pytest

from ._interpreter import interpreter_results
from ._sampling_kernel_check import CHECKS


@pytest.fixture(scope="module")
def results(triton_interpreter: None) -> dict[str, str]:
    return interpreter_results("_sampling_kernel_check")


@pytest.mark.parametrize("name", list(CHECKS))
def test_sampling_kernel(results: dict[str, str], name: str) -> None:
    assert results.get(name) == "ok", results.get(name, "not run")
