"""Packed causal attention on CUDA (the flash varlen kernel) against per-sequence SDPA in fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlkit.models.attention import packed_causal_attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    outs, start = [], 0
    for n in lengths:
        qs, ks, vs = (t[start : start + n].transpose(0, 1)[None] for t in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)[0].transpose(0, 1))
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
def test_forward_and_gradients_match_sdpa(heads: int, kv_heads: int) -> None:
    lengths = [5, 130, 1, 77]
    total, dh = sum(lengths), 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(total, h, dh, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
        for h in (heads, kv_heads, kv_heads)
    )
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    out = packed_causal_attention(q, k, v, cu, max(lengths))
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = reference(q32, k32, v32, lengths)
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), grad_out.float())
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    for ours, theirs in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(ours.float(), theirs, atol=5e-2, rtol=5e-2)
