"""Packed causal attention: every CPU layout equals plain causal attention run on each sequence alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlkit.models import attention
from rlkit.models.attention import packed_causal_attention


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Causal attention of each sequence on its own, written out with softmax (GQA by repetition)."""
    rep = q.shape[1] // k.shape[1]
    outs, start = [], 0
    for n in lengths:
        qs = q[start : start + n].transpose(0, 1)
        ks = k[start : start + n].repeat_interleave(rep, dim=1).transpose(0, 1)
        vs = v[start : start + n].repeat_interleave(rep, dim=1).transpose(0, 1)
        scores = qs @ ks.transpose(1, 2) / q.shape[-1] ** 0.5
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        outs.append((F.softmax(scores, dim=-1) @ vs).transpose(0, 1))
        start += n
    return torch.cat(outs)


def _inputs(lengths: list[int], heads: int = 4, kv_heads: int = 2, dim: int = 8) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    total = sum(lengths)
    q, k, v = (
        torch.randn(total, h, dim, generator=gen, dtype=torch.float64, requires_grad=True)
        for h in (heads, kv_heads, kv_heads)
    )
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


@pytest.mark.parametrize(
    "lengths",
    [[5, 5, 5, 5], [1, 7, 3, 12, 2], [9], [30, 1, 1, 1]],
    ids=["equal", "uneven", "single", "one-long"],
)
@pytest.mark.parametrize("layout", ["padded", "dense", "per_sequence", "chosen"])
def test_layouts_match_per_sequence_softmax(lengths: list[int], layout: str) -> None:
    q, k, v, cu = _inputs(lengths)
    if layout == "chosen":
        out = packed_causal_attention(q, k, v, cu, max(lengths))
    else:
        kx, vx = attention._expand_kv(k, v, q.shape[1])
        if layout == "padded":
            out = attention._sdpa_padded(q, kx, vx, cu, max(lengths))
        elif layout == "dense":
            out = attention._sdpa_dense(q, kx, vx, cu)
        else:
            out = attention._sdpa_per_sequence(q, kx, vx, cu)
    expected = _reference(q, k, v, lengths)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
