"""On CUDA: the fused log-prob's memory claim, and the bf16 native decoder (varlen flash path) vs transformers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from rlkit.models import CausalLM, load_causal_lm, pack_padded, token_logprobs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_token_logprobs_peak_memory_is_chunk_bounded() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    num_tokens, dim, vocab, chunk = 16384, 1024, 131072, 1024
    gen = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(num_tokens, dim, device=dev, dtype=torch.bfloat16, generator=gen).requires_grad_()
    weight = (torch.randn(vocab, dim, device=dev, generator=gen) * 0.02).bfloat16().requires_grad_()
    labels = torch.randint(0, vocab, (num_tokens,), device=dev, generator=gen)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    lp, ent = token_logprobs(hidden, weight, labels, chunk_tokens=chunk, with_entropy=True)
    assert ent is not None
    (lp.sum() + ent.sum()).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    full_logits_fp32 = num_tokens * vocab * 4  # 8 GiB: what the naive computation holds, at least
    print(f"peak extra {peak / 2**30:.2f} GiB vs one T x V fp32 logits {full_logits_fp32 / 2**30:.2f} GiB")
    assert peak < 0.3 * full_logits_fp32


def test_token_logprobs_cuda_fp32_matches_naive() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(1)
    hidden = torch.randn(300, 64, device=dev, generator=gen).requires_grad_()
    weight = torch.randn(1000, 64, device=dev, generator=gen).mul_(0.2).requires_grad_()
    labels = torch.randint(0, 1000, (300,), device=dev, generator=gen)
    lp, ent = token_logprobs(hidden, weight, labels, temperature=0.8, chunk_tokens=64, with_entropy=True)
    assert ent is not None
    logp = torch.log_softmax(hidden @ weight.T / 0.8, -1)
    ref_lp, ref_ent = logp.gather(-1, labels[:, None])[:, 0], -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-5)
    grads = torch.autograd.grad((lp + 0.1 * ent).sum(), (hidden, weight))
    ref_grads = torch.autograd.grad((ref_lp + 0.1 * ref_ent).sum(), (hidden, weight))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_entropy", [False, True])
def test_token_logprobs_triton_kernels_match_torch_path_in_bf16(
    with_entropy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Triton chunk kernels (the CUDA default) against the PyTorch chunk path, bf16 weights."""
    pytest.importorskip("triton")
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(2)
    hidden = torch.randn(1500, 256, device=dev, generator=gen).bfloat16().requires_grad_()
    weight = (torch.randn(32003, 256, device=dev, generator=gen) * 0.05).bfloat16().requires_grad_()
    labels = torch.randint(0, 32003, (1500,), device=dev, generator=gen)
    coef = torch.randn(1500, device=dev, generator=gen)

    def run(triton: str) -> list[torch.Tensor]:
        monkeypatch.setenv("RLKIT_TRITON", triton)
        lp, ent = token_logprobs(
            hidden, weight, labels, temperature=0.9, chunk_tokens=512, with_entropy=with_entropy
        )
        loss = (lp * coef).sum() + (0.1 * ent.sum() if ent is not None else 0.0)
        grads = torch.autograd.grad(loss, (hidden, weight))
        return [lp, *([ent] if ent is not None else []), *grads]

    fused, plain = run("1"), run("0")
    for got, want in zip(fused[:-2], plain[:-2], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    for got, want in zip(fused[-2:], plain[-2:], strict=True):  # bf16 gradients
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=1e-4)


@torch.no_grad()
def test_bf16_native_matches_transformers_on_cuda(
    tmp_path: Path, family: str, make_hf_model: Callable[..., Any]
) -> None:
    from transformers import AutoModelForCausalLM

    dev = torch.device("cuda")
    make_hf_model(family, hidden_size=256, intermediate_size=512, head_dim=64).save_pretrained(tmp_path)
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).to(dev).eval()
    native = load_causal_lm(tmp_path, dtype=torch.bfloat16, device=dev)
    assert isinstance(native, CausalLM) and native.model.rotary.inv_freq.dtype == torch.float32
    gen = torch.Generator(device=dev).manual_seed(2)
    ids = torch.randint(3, 96, (4, 64), device=dev, generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :20] = 0
    mask[3, 40:] = 0
    ids_T, pos_T, cu, keep = pack_padded(ids, mask)
    lp, _ = token_logprobs(native.forward_packed(ids_T, pos_T, cu), native.lm_head.weight, ids_T)
    logits = hf_model(
        input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
    ).logits
    ref = logits.float().log_softmax(-1)[keep].gather(-1, ids_T[:, None])[:, 0]
    diff = (lp - ref).abs()
    print(f"{family}: max |dlogp| {diff.max().item():.4f}, mean {diff.mean().item():.5f}")
    assert diff.mean() < 0.02 and diff.max() < 0.2
