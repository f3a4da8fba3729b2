"""token_logprobs equals the naive full-logits computation in values and gradients.

Tolerances follow from fp32 rounding, not from one machine: the results are compared with the
naive computation in float64 (exact to ~1e-16 here), against first-order forward-error bounds of
the fp32 arithmetic (see :func:`_fp32_bounds`). BLAS splits sums differently with 1, 2 or 4
threads, so a fixed atol of "a few ulps of the largest value" fails on small, cancelling entries.
"""

from __future__ import annotations

import pytest
import torch

from rlkit.models import token_logprobs

T, D, V = 37, 16, 50
U = torch.finfo(torch.float32).eps / 2  # unit roundoff of fp32, 2**-24
K = 8  # roundings per element outside the reductions (scale, subtract, exp, log, multiply, ...)


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


def _exact(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    coef_lp: torch.Tensor,
    coef_ent: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The naive computation in float64: log-probs, entropy and the gradients of
    ``sum(coef_lp * lp + coef_ent * ent)`` for hidden and weight."""
    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    lp, ent = _naive(h64, w64, labels, temperature)
    loss = (lp * coef_lp.double()).sum() + (ent * coef_ent.double()).sum()
    grad_h, grad_w = torch.autograd.grad(loss, (h64, w64))
    return lp.detach(), ent.detach(), grad_h, grad_w


def _fp32_bounds(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    coef_lp: torch.Tensor,
    coef_ent: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-order bounds on the fp32 errors of log-probs, entropy, grad hidden and grad weight.

    Derivation (u = 2**-24; a sum of n terms a_i in any order is off by at most n u sum|a_i|):

    - logit z_tv = (h_t . w_v) / tau, a D-term dot product: err_z <= (D + K) u s_t, where
      s_t = max_v |h_t| . |w_v| / tau; the log-sum-exp adds at most err_z + K u |lse_t|, so
      err_logp_t <= 2 (D + K) u (s_t + |lse_t|).
    - p = exp(logp) has relative error err_logp; entropy H = -sum_v p logp over V terms:
      err_H <= err_logp (1 + H) + (V + K) u H.
    - the logits' gradient g_tv = [c_lp (1[v=y] - p) - c_ent p (logp + H)] / tau has magnitude at
      most A_tv = [|c_lp| (1[v=y] + p) + |c_ent| p (|logp| + H)] / tau and error at most
      e_tv = K u A_tv + p [err_logp (|c_lp| + |c_ent| (|logp| + H + 1)) + |c_ent| err_H] / tau.
    - grad_h = g @ W sums V terms: err <= (V + K) u A @ |W| + e @ |W|; grad_W = g.T @ h sums T
      terms (in chunks or not, any order): err <= (T + K) u A.T @ |h| + e.T @ |h|.
    """
    h, w = hidden.detach().double(), weight.detach().double()
    c_lp, c_ent = coef_lp.double().abs()[:, None], coef_ent.double().abs()[:, None]
    logp = torch.log_softmax(h @ w.T / temperature, dim=-1)
    p, lse = logp.exp(), torch.logsumexp(h @ w.T / temperature, dim=-1)
    ent = -(p * logp).sum(-1)
    scale = (h.abs() @ w.abs().T).amax(-1) / temperature
    err_logp = 2 * (D + K) * U * (scale + lse.abs())
    err_ent = err_logp * (1 + ent) + (V + K) * U * ent
    onehot = torch.nn.functional.one_hot(labels, V).double()
    mag = (c_lp * (onehot + p) + c_ent * p * (logp.abs() + ent[:, None])) / temperature
    carried = err_logp[:, None] * (c_lp + c_ent * (logp.abs() + ent[:, None] + 1)) + c_ent * err_ent[:, None]
    e = K * U * mag + p * carried / temperature
    err_h = (V + K) * U * mag @ w.abs() + e @ w.abs()
    err_w = (T + K) * U * mag.T @ h.abs() + e.T @ h.abs()
    return err_logp, err_ent, err_h, err_w


def _assert_within(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    """``|got - want| <= bound`` elementwise, with the worst ratio in the message."""
    ratio = ((got.double() - want).abs() / bound).max().item()
    assert ratio <= 1.0, f"{what}: fp32 error is {ratio:.2f}x its rounding bound"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("chunk_tokens", [8, 1024])
def test_values_and_gradients_match_naive(temperature: float, with_entropy: bool, chunk_tokens: int) -> None:
    hidden, weight, labels = _inputs()
    coef_lp = torch.randn(T, generator=torch.Generator().manual_seed(1))
    coef_ent = torch.randn(T, generator=torch.Generator().manual_seed(2))
    if not with_entropy:
        coef_ent = torch.zeros(T)

    lp, ent = token_logprobs(
        hidden, weight, labels, temperature=temperature, chunk_tokens=chunk_tokens, with_entropy=with_entropy
    )
    want = _exact(hidden, weight, labels, temperature, coef_lp, coef_ent)
    bounds = _fp32_bounds(hidden, weight, labels, temperature, coef_lp, coef_ent)
    assert lp.dtype == torch.float32 and lp.shape == (T,)
    _assert_within(lp, want[0], bounds[0], "log-probs")
    loss = (lp * coef_lp).sum()
    if with_entropy:
        assert ent is not None and ent.dtype == torch.float32
        _assert_within(ent, want[1], bounds[1], "entropy")
        loss = loss + (ent * coef_ent).sum()
    else:
        assert ent is None
    grad_h, grad_w = torch.autograd.grad(loss, (hidden, weight))
    _assert_within(grad_h, want[2], bounds[2], "grad hidden")
    _assert_within(grad_w, want[3], bounds[3], "grad weight")


def test_bounds_are_tight_enough_to_catch_a_wrong_gradient() -> None:
    """Guards the bounds above: an error of 1e-4 of the largest gradient entry exceeds them."""
    hidden, weight, labels = _inputs()
    coef_lp, coef_ent = torch.ones(T), torch.zeros(T)
    _, _, _, grad_w = _exact(hidden, weight, labels, 1.0, coef_lp, coef_ent)
    _, _, _, err_w = _fp32_bounds(hidden, weight, labels, 1.0, coef_lp, coef_ent)
    assert float((err_w / grad_w.abs().max()).max()) < 1e-4


def test_entropy_only_gradient_and_frozen_weight() -> None:
    hidden, weight, labels = _inputs(3)
    weight.requires_grad_(False)  # a reference model's head: only hidden needs a gradient
    _, ent = token_logprobs(hidden, weight, labels, chunk_tokens=5, with_entropy=True)
    assert ent is not None
    (grad,) = torch.autograd.grad(ent.sum(), hidden)
    coef_lp, coef_ent = torch.zeros(T), torch.ones(T)
    want = _exact(hidden, weight, labels, 1.0, coef_lp, coef_ent)[2]
    bound = _fp32_bounds(hidden, weight, labels, 1.0, coef_lp, coef_ent)[2]
    _assert_within(grad, want, bound, "grad hidden")


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
