"""Soft-capped logits (Gemma-2's ``final_logit_softcapping``) in the trainer's chunked log-probs."""

from __future__ import annotations

import pytest
import torch

from rlkit.models.logprobs import token_logprobs


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_softcap_equals_the_naive_computation_in_values_and_gradients(temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 16, generator=g, dtype=torch.float64).requires_grad_()
    weight = (3 * torch.randn(40, 16, generator=g, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, 40, (13,), generator=g)
    cap = 2.5
    logp, ent = token_logprobs(
        hidden, weight, labels, temperature=temperature, chunk_tokens=5, with_entropy=True, softcap=cap
    )
    assert ent is not None
    (logp.sum() + 0.3 * ent.sum()).backward()
    got = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad, weight.grad = None, None
    ref_lp_all = (cap * torch.tanh(hidden @ weight.T / cap) / temperature).log_softmax(-1)
    ref_lp = ref_lp_all.gather(1, labels[:, None]).squeeze(1)
    ref_ent = -(ref_lp_all.exp() * ref_lp_all).sum(-1)
    (ref_lp.sum() + 0.3 * ref_ent.sum()).backward()
    # float64 inputs: the chunked path computes in fp32, so agreement is to fp32 rounding
    torch.testing.assert_close(logp.double(), ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[0], hidden.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], weight.grad, atol=1e-5, rtol=1e-5)


def test_the_cap_changes_the_logprobs_and_must_be_positive() -> None:
    hidden, weight = torch.randn(4, 8), 5 * torch.randn(20, 8)
    labels = torch.arange(4)
    plain, _ = token_logprobs(hidden, weight, labels)
    capped, _ = token_logprobs(hidden, weight, labels, softcap=1.0)
    assert (plain - capped).abs().max() > 1e-2
    with pytest.raises(ValueError, match="softcap"):
        token_logprobs(hidden, weight, labels, softcap=0.0)
