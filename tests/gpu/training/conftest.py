"""The tiny model folder the GPU training tests share, and the process group they run in."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch.distributed as dist

VOCAB = 320


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A random tiny Qwen2 (hidden 128, head dim 32: flash-attention shapes) saved as a HF folder."""
    from rlkit.models import CausalLM, init_weights, save_hf
    from rlkit.models.shapes import TINY
    from rlkit.training.distributed import ensure_process_group

    cfg = replace(TINY, vocab_size=VOCAB, hidden_size=128, intermediate_size=256, head_dim=32)
    model = CausalLM(cfg)
    init_weights(model, seed=0)
    out = tmp_path_factory.mktemp("gpu_tiny")
    save_hf(model, out)
    created = not dist.is_initialized()
    ensure_process_group()
    yield out
    if created and dist.is_initialized():
        dist.destroy_process_group()
