"""Batched token sampling on the device: one call samples a token for every running sequence.

Every row carries its own parameters (temperature, top-k, top-p, min-p, repetition penalty) as
tensors, so one batch mixes requests freely. Which stages run at all (truncation, penalty) is decided
on the host from the requests in the batch, so a batch that needs no truncation pays for none.

Sampling uses the exponential-race (Gumbel-max) trick: ``argmax(log p - log E)`` with
``E ~ Exponential(1)`` is an exact sample of ``p``, needs no host synchronisation (unlike
``torch.multinomial`` on some paths) and lets the caller supply the noise, which is how per-request
seeded generators make results independent of batch composition.

Shape legend: B = rows (sequences), V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowParams:
    """Per-row sampling parameters; a ``None`` field means that stage is off for every row.

    ``divide`` (some row has a temperature other than 0 and 1) and ``any_greedy`` (some row has
    temperature 0) let the caller, who knows the requests, skip whole passes over the logits.

    Shape:
        temperature: (B,) fp32, 0 for greedy rows. top_k: (B,) long, <= 0 or >= V for off.
        top_p: (B,) fp32, 1.0 for off. min_p: (B,) fp32, 0 for off. repetition_penalty: (B,)
        fp32, 1.0 for off; needs ``seen`` (B, V) bool, the tokens already in each sequence.
    """

    temperature: torch.Tensor
    top_k: torch.Tensor | None = None
    top_p: torch.Tensor | None = None
    min_p: torch.Tensor | None = None
    repetition_penalty: torch.Tensor | None = None
    seen: torch.Tensor | None = None
    divide: bool = True
    any_greedy: bool = True

    @property
    def temperature_only(self) -> bool:
        """No row truncates or penalises: sampling needs nothing but the temperature."""
        stages = (self.top_k, self.top_p, self.min_p, self.repetition_penalty)
        return all(stage is None for stage in stages)


def apply_repetition_penalty(
    logits_BV: torch.Tensor, seen_BV: torch.Tensor, penalty_B: torch.Tensor
) -> torch.Tensor:
    """Hugging Face's repetition penalty: seen tokens' positive logits / p, negative ones * p.

    Shape:
        logits_BV: (B, V); seen_BV: (B, V) bool; penalty_B: (B,). Returns (B, V).
    """
    p = penalty_B[:, None]
    penalised = torch.where(logits_BV > 0, logits_BV / p, logits_BV * p)
    return torch.where(seen_BV, penalised, logits_BV)


def truncate(
    scores_BV: torch.Tensor,
    top_k_B: torch.Tensor | None,
    top_p_B: torch.Tensor | None,
    min_p_B: torch.Tensor | None,
) -> torch.Tensor:
    """Set the scores of tokens removed by top-k, then top-p, then min-p to -inf (HF's order).

    Top-k keeps ties with the k-th score (as Hugging Face does); top-p keeps the smallest prefix
    of the sorted distribution whose mass reaches p (always at least the top token); min-p drops
    tokens whose probability is below ``min_p`` times the top token's.

    Shape:
        scores_BV: (B, V) fp32 temperature-scaled logits; top_k_B: (B,) long; top_p_B, min_p_B:
        (B,) fp32; each may be None (stage off). Returns (B, V).
    """
    neg_inf = float("-inf")
    vocab = scores_BV.shape[-1]
    if top_k_B is not None or top_p_B is not None:
        sorted_BV, order_BV = scores_BV.sort(dim=-1, descending=True)
        remove_sorted = torch.zeros_like(sorted_BV, dtype=torch.bool)
        if top_k_B is not None:
            k = torch.where((top_k_B <= 0) | (top_k_B > vocab), vocab, top_k_B)
            kth = sorted_BV.gather(1, (k - 1)[:, None])
            remove_sorted |= sorted_BV < kth
            sorted_BV = sorted_BV.masked_fill(remove_sorted, neg_inf)
        if top_p_B is not None:
            probs = sorted_BV.softmax(dim=-1)
            mass_above = probs.cumsum(dim=-1) - probs
            remove_sorted |= (mass_above >= top_p_B[:, None]) & (top_p_B[:, None] < 1.0)
        remove = torch.zeros_like(remove_sorted).scatter_(1, order_BV, remove_sorted)
        scores_BV = scores_BV.masked_fill(remove, neg_inf)
    if min_p_B is not None:
        probs = scores_BV.softmax(dim=-1)
        floor = min_p_B[:, None] * probs.amax(dim=-1, keepdim=True)
        scores_BV = scores_BV.masked_fill(probs < floor, neg_inf)
    return scores_BV


def sample_tokens(
    logits_BV: torch.Tensor, params: RowParams, noise_BV: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one token per row; also return its policy log-prob and its sampling log-prob.

    The policy log-prob is ``log_softmax(logits / T)`` at the token (T = 1 for greedy rows): the
    quantity the trainer recomputes. The sampling log-prob is under the distribution actually
    sampled from (penalty and truncation applied); it is 0 for greedy rows (a point mass). Without
    penalty or truncation the two distributions are the same and are computed once: every pass
    over the (B, V) logits costs device bandwidth at large batch.

    Args:
        logits_BV: Raw fp32 logits of the next token.
        params: Per-row parameters.
        noise_BV: ``Exponential(1)`` noise, or None when every row is greedy; overwritten.

    Shape:
        logits_BV, noise_BV: (B, V) fp32. Returns tokens (B,) long, logprobs (B,) fp32,
        sampling_logprobs (B,) fp32.
    """
    greedy_B = params.temperature <= 0
    if params.divide:
        temp_B = torch.where(greedy_B, torch.ones_like(params.temperature), params.temperature)[:, None]
        scaled_BV = logits_BV / temp_B
    else:
        temp_B, scaled_BV = None, logits_BV
    policy_lp_BV = scaled_BV.log_softmax(dim=-1)
    truncating = any(t is not None for t in (params.top_k, params.top_p, params.min_p))
    if params.repetition_penalty is not None:
        assert params.seen is not None, "repetition penalty needs the seen-token mask"
        scores_BV = apply_repetition_penalty(logits_BV, params.seen, params.repetition_penalty)
        scores_BV = scores_BV / temp_B if temp_B is not None else scores_BV
        sampling_lp_BV = truncate(scores_BV, params.top_k, params.top_p, params.min_p).log_softmax(dim=-1)
    elif truncating:
        sampling_lp_BV = truncate(scaled_BV, params.top_k, params.top_p, params.min_p).log_softmax(dim=-1)
    else:
        sampling_lp_BV = policy_lp_BV
    if noise_BV is None:
        tokens_B = sampling_lp_BV.argmax(dim=-1)
    else:
        # The exponential race: argmax(log p - log E) is a sample of p. E = 0 would give +inf and
        # beat even a masked (-inf) token, hence the clamp.
        log_noise = noise_BV.clamp_min_(torch.finfo(noise_BV.dtype).tiny).log_()
        tokens_B = (sampling_lp_BV - log_noise).argmax(dim=-1)
        if params.any_greedy:
            tokens_B = torch.where(greedy_B, sampling_lp_BV.argmax(dim=-1), tokens_B)
    idx = tokens_B[:, None]
    logprobs_B = policy_lp_BV.gather(1, idx).squeeze(1)
    sampling_B = sampling_lp_BV.gather(1, idx).squeeze(1)
    if params.any_greedy:
        sampling_B = torch.where(greedy_B, 0.0, sampling_B)
    return tokens_B, logprobs_B, sampling_B
