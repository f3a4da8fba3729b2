"""token_logprobs equals the naive full-logits computation in values and gradients."""

from __future__ import annotations

import pytest
import torch

from rlkit.models import token_logprobs

T, D, V = 37, 16, 50


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, D, generator=gen, dtype=torch.float64).float().requires_grad_()
    weight = (torch.randn(V, D, generator=gen) * 0.5).requires_grad_()
    labels = torch.randint(0, V, (T,), generator=gen)
    return hidden, weight, labels


def _naive(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(hidden @ weight.T / temperature, dim=-1)
    return logp.gather(-1, labels[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("chunk_tokens", [8, 1024])
def test_values_and_gradients_match_naive(temperature: float, with_entropy: bool, chunk_tokens: int) -> None:
    hidden, weight, labels = _inputs()
    coef_lp = torch.randn(T, generator=torch.Generator().manual_seed(1))
    coef_ent = torch.randn(T, generator=torch.Generator().manual_seed(2))

    lp, ent = token_logprobs(
        hidden, weight, labels, temperature=temperature, chunk_tokens=chunk_tokens, with_entropy=with_entropy
    )
    ref_lp, ref_ent = _naive(hidden, weight, labels, temperature)
    assert lp.dtype == torch.float32 and lp.shape == (T,)
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-6)
    loss = (lp * coef_lp).sum()
    ref_loss = (ref_lp * coef_lp).sum()
    if with_entropy:
        assert ent is not None and ent.dtype == torch.float32
        torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-6)
        loss = loss + (ent * coef_ent).sum()
        ref_loss = ref_loss + (ref_ent * coef_ent).sum()
    else:
        assert ent is None
    grads = torch.autograd.grad(loss, (hidden, weight))
    ref_grads = torch.autograd.grad(ref_loss, (hidden, weight))
    for got, want in zip(grads, ref_grads, strict=True):
        # Weight gradients reach ~8 here; fp32 summation order alone moves them by a few 1e-6.
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_entropy_only_gradient_and_frozen_weight() -> None:
    hidden, weight, labels = _inputs(3)
    weight.requires_grad_(False)  # a reference model's head: only hidden needs a gradient
    _, ent = token_logprobs(hidden, weight, labels, chunk_tokens=5, with_entropy=True)
    assert ent is not None
    (grad,) = torch.autograd.grad(ent.sum(), hidden)
    (ref,) = torch.autograd.grad(_naive(hidden, weight, labels, 1.0)[1].sum(), hidden)
    torch.testing.assert_close(grad, ref, rtol=0, atol=1e-6)


def test_no_grad_and_empty_and_bf16() -> None:
    hidden, weight, labels = _inputs(4)
    with torch.no_grad():
        lp, _ = token_logprobs(hidden, weight, labels, chunk_tokens=4)
    assert not lp.requires_grad
    empty, _ = token_logprobs(hidden[:0], weight, labels[:0])
    assert empty.shape == (0,)
    lp16, _ = token_logprobs(hidden.bfloat16(), weight.bfloat16(), labels, chunk_tokens=4)
    assert lp16.dtype == torch.float32
    torch.testing.assert_close(lp16, _naive(hidden, weight, labels, 1.0)[0], rtol=0, atol=0.1)
    hb, wb = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    token_logprobs(hb, wb, labels, chunk_tokens=4)[0].sum().backward()
    assert hb.grad is not None and hb.grad.dtype == torch.bfloat16 and wb.grad is not None
    # the weight gradient's per-chunk products run in bf16 (tensor cores), summed in fp32
    (ref_w,) = torch.autograd.grad(_naive(hidden, weight, labels, 1.0)[0].sum(), weight)
    torch.testing.assert_close(wb.grad.float(), ref_w, rtol=0, atol=0.05 * float(ref_w.abs().max()))
    assert wb.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError):
        token_logprobs(hidden, weight, labels, temperature=0.0)
