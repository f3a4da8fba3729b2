"""Tiny models, RL batches and a single-process group for the training-engine tests (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch.distributed as dist

from rlkit.models import CausalLM, init_weights, save_hf
from rlkit.training.distributed import ensure_process_group

from ._builders import tiny_decoder_config


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """A single-process gloo group for the module; torn down so other test modules start clean."""
    created = not dist.is_initialized()
    ensure_process_group()
    yield
    if created and dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded tiny qwen2 checkpoint (hidden 64, 2 layers, vocab 300, tied) saved as an HF folder."""
    model = CausalLM(tiny_decoder_config())
    init_weights(model, seed=0)
    out = tmp_path_factory.mktemp("tiny_lm")
    save_hf(model, out)
    return out
