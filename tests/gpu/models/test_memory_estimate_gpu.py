"""``rlkit plan``'s memory estimate against a measured peak of the Qwen2.5-0.5B shape on one GPU.

The model is the native decoder with Qwen2.5-0.5B's sizes and random weights (no download); one
forward + chunked log-prob + backward over a packed micro-batch (8192 tokens, 16 sequences),
measured with ``torch.cuda.max_memory_allocated`` above what the weights and inputs already hold.
Two settings: the model cast to bf16 (bf16 gradients), and the engine's one-GPU setting (fp32
parameters and gradients, the forward under bf16 autocast, see :mod:`rlkit.training.engine`).

What the estimate gave when this test was written (the lead compares; run with ``-s``):
bf16 parameters 11.87 GiB without checkpointing, 1.70 GiB with it (at the log-prob backward; the
1.70 GiB was measured before); fp32 parameters under autocast 12.80 GiB without, 2.48 GiB with
(at the backward through the last layer).
"""

from __future__ import annotations

import pytest
import torch

from rlkit.models import CausalLM, DecoderConfig, token_logprobs
from rlkit.models import memory as mem
from rlkit.models.logprobs import FUSED_CHUNK_TOKENS

# (parameter dtype, autocast dtype or None)
SETTINGS = {"bf16": (torch.bfloat16, None), "fp32-autocast": (torch.float32, torch.bfloat16)}

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


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_agrees_with_the_measured_peak_of_the_0_5b_shape(checkpointing: bool, setting: str) -> None:
    torch.manual_seed(0)
    param_dtype, autocast = SETTINGS[setting]
    cfg = DecoderConfig.from_hf(QWEN_0_5B)
    model = CausalLM(cfg).to(device="cuda", dtype=param_dtype)
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
    with torch.autocast("cuda", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        hidden = model.forward_packed(ids, pos, cu)
        weight = model.lm_head.weight.to(hidden.dtype)  # as rlkit.training.heads.PackedPolicy
        logprobs, _ = token_logprobs(hidden, weight, ids, chunk_tokens=FUSED_CHUNK_TOKENS)
    logprobs.sum().backward()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - before
    param_b = param_dtype.itemsize
    step = mem.MicroBatchPass(
        tokens, 2, checkpointing, FUSED_CHUNK_TOKENS, cuda=True, param_bytes=param_b, grad_bytes=param_b
    )
    moment, parts = mem.update_peak(shape, step)
    estimate = sum(parts.values())
    print(
        f"0.5B shape, {setting}, checkpointing={checkpointing}: estimate {estimate / 2**30:.2f} GiB "
        f"at {moment}, measured {measured / 2**30:.2f} GiB"
    )
    assert abs(estimate - measured) <= TOLERANCE * measured, (moment, estimate / 2**30, measured / 2**30)
