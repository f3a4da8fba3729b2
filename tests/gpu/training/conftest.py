"""The tiny model folder the GPU training tests share, and the process group they run in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch.distributed as dist

VOCAB = 320


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A random tiny Qwen2 (hidden 128, head dim 32: flash-attention shapes) saved as a HF folder."""
    from rlkit.models import CausalLM, DecoderConfig, init_weights, save_hf
    from rlkit.training.distributed import ensure_process_group

    cfg = DecoderConfig(
        architecture="qwen2", vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=32, tie_word_embeddings=True, attention_bias=True,
        eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = CausalLM(cfg)
    init_weights(model, seed=0)
    out = tmp_path_factory.mktemp("gpu_tiny")
    save_hf(model, out)
    created = not dist.is_initialized()
    ensure_process_group()
    yield out
    if created and dist.is_initialized():
        dist.destroy_process_group()
