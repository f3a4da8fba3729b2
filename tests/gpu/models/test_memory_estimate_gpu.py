"""``rlkit plan``'s memory estimate against a measured peak of the Qwen2.5-0.5B shape on one GPU.

The model is the native decoder with Qwen2.5-0.5B's sizes and random weights (no download), in
bf16; one forward + chunked log-prob + backward over a packed micro-batch, measured with
``torch.cuda.max_memory_allocated`` above what the weights and inputs already hold.
"""

from __future__ import annotations

import pytest
import torch

from rlkit.models import CausalLM, DecoderConfig, token_logprobs
from rlkit.models import memory as mem
from rlkit.trainer.plan import LOGPROB_CHUNK_TOKENS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

QWEN_0_5B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
}
# Wider than the CPU test's: CUDA kernels (flash attention, the fused log-prob) keep their own
# workspaces and the caching allocator rounds up blocks.
TOLERANCE = 0.25


@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_agrees_with_the_measured_peak_of_the_0_5b_shape(checkpointing: bool) -> None:
    torch.manual_seed(0)
    cfg = DecoderConfig.from_hf(QWEN_0_5B)
    model = CausalLM(cfg).to(device="cuda", dtype=torch.bfloat16)
    model.set_gradient_checkpointing(checkpointing)
    shape = mem.ModelShape.from_hf(QWEN_0_5B)
    assert shape.num_params == sum(p.numel() for p in model.parameters())
    tokens, seqs = 8192, 16
    length = tokens // seqs
    ids = torch.randint(0, cfg.vocab_size, (tokens,), device="cuda")
    pos = torch.arange(length, device="cuda").repeat(seqs)
    cu = torch.arange(0, tokens + 1, length, dtype=torch.int32, device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    hidden = model.forward_packed(ids, pos, cu)
    logprobs, _ = token_logprobs(hidden, model.lm_head.weight, ids, chunk_tokens=LOGPROB_CHUNK_TOKENS)
    logprobs.sum().backward()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - before
    estimate = (
        mem.activations(shape, tokens, 2, checkpointing=checkpointing)
        + mem.logits(shape, tokens, LOGPROB_CHUNK_TOKENS)
        + shape.num_params * 2  # bf16 gradients of bf16 parameters
    )
    assert abs(estimate - measured) <= TOLERANCE * measured, (estimate / 2**30, measured / 2**30)
