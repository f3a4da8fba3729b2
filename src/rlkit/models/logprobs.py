"""Token log-probs and entropy from final hidden states, without materialising T x V fp32 logits.

The naive ``log_softmax(hidden @ W.T / temperature)`` holds the whole (T, V) logits in fp32 plus
their gradient: for 16k tokens and a 152k vocabulary that is ~10 GB each. ``token_logprobs``
computes ``chunk_tokens`` rows at a time (logits in the weight's dtype, upcast only that chunk) and,
under autograd, recomputes each chunk's logits in backward, so peak memory holds a few chunks of
logits, never T x V. Values and gradients equal the naive computation (fp32, to ~1e-6).

Shape legend: T = tokens, D = hidden size, V = vocabulary, C = tokens in a chunk.
"""

from __future__ import annotations

from typing import Any

import torch


def _chunk_logits(h_CD: torch.Tensor, w_VD: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 temperature-scaled logits (C, V) of one chunk; the matmul runs in the weight's dtype."""
    logits = (h_CD.to(w_VD.dtype) @ w_VD.T).float()
    return logits / temperature if temperature != 1.0 else logits


class _TokenLogprobs(torch.autograd.Function):
    """Chunked log-softmax gather (+ entropy) with per-chunk recomputation in backward."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden_TD: torch.Tensor,
        weight_VD: torch.Tensor,
        labels_T: torch.Tensor,
        temperature: float,
        chunk_tokens: int,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_tokens = hidden_TD.shape[0]
        logprobs = torch.empty(num_tokens, dtype=torch.float32, device=hidden_TD.device)
        lse = torch.empty_like(logprobs)
        entropy = torch.empty(num_tokens if with_entropy else 0, dtype=torch.float32, device=hidden_TD.device)
        for start in range(0, num_tokens, chunk_tokens):
            end = min(start + chunk_tokens, num_tokens)
            logits = _chunk_logits(hidden_TD[start:end], weight_VD, temperature)
            lse_c = torch.logsumexp(logits, dim=-1)
            lse[start:end] = lse_c
            logp = logits.sub_(lse_c[:, None])
            logprobs[start:end] = logp.gather(-1, labels_T[start:end, None]).squeeze(-1)
            if with_entropy:
                # -sum p log p is more accurate in fp32 than lse - sum p z (no cancellation)
                entropy[start:end] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(hidden_TD, weight_VD, labels_T, lse, entropy)
        ctx.temperature, ctx.chunk_tokens, ctx.with_entropy = temperature, chunk_tokens, with_entropy
        return logprobs, entropy

    @staticmethod
    def backward(
        ctx: Any, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        hidden_TD, weight_VD, labels_T, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        use_entropy = ctx.with_entropy and grad_entropy is not None
        grad_h = torch.empty_like(hidden_TD) if need_h else None
        # fp32 accumulator across chunks: summing bf16 partial products would lose precision.
        grad_w = (
            torch.zeros(weight_VD.shape, dtype=torch.float32, device=weight_VD.device) if need_w else None
        )
        num_tokens = hidden_TD.shape[0]
        for start in range(0, num_tokens, ctx.chunk_tokens):
            end = min(start + ctx.chunk_tokens, num_tokens)
            h_CD = hidden_TD[start:end]
            logp = _chunk_logits(h_CD, weight_VD, ctx.temperature).sub_(lse[start:end, None])
            grad = logp.exp()  # probabilities, turned into the logits' gradient in place below
            g_lp = grad_logprobs[start:end] if grad_logprobs is not None else torch.zeros_like(lse[start:end])
            if grad_entropy is not None and use_entropy:
                # dH/dz_j = -p_j (log p_j + H)
                logp.add_(entropy[start:end, None]).mul_(grad_entropy[start:end, None])
                grad.mul_(logp.add_(g_lp[:, None])).neg_()
            else:
                grad.mul_(-g_lp[:, None])
            grad.scatter_add_(-1, labels_T[start:end, None], g_lp[:, None])  # d logp_y / dz = onehot - p
            if ctx.temperature != 1.0:
                grad.div_(ctx.temperature)
            if grad_h is not None:
                grad_h[start:end] = (grad.to(weight_VD.dtype) @ weight_VD).to(hidden_TD.dtype)
            if grad_w is not None:
                if weight_VD.dtype == torch.float32:
                    grad_w.addmm_(grad.T, h_CD.float())
                else:
                    # A (V x C) @ (C x D) product in fp32 runs on CUDA cores (~20% of a 0.5B
                    # model's update); in the weight's dtype it uses tensor cores, which accumulate
                    # in fp32 and round each chunk's product once, as a bf16 nn.Linear's weight
                    # gradient does. The sum over chunks stays fp32.
                    grad_w.add_(grad.to(weight_VD.dtype).T @ h_CD.to(weight_VD.dtype))
            del logp, grad
        grad_w_out = grad_w.to(weight_VD.dtype) if grad_w is not None else None
        return grad_h, grad_w_out, None, None, None, None


def token_logprobs(
    hidden_TD: torch.Tensor,
    lm_head_weight_VD: torch.Tensor,
    labels_T: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each label under ``softmax(hidden @ W.T / temperature)``, chunk by chunk.

    Equals ``log_softmax(hidden @ W.T / temperature).gather(labels)`` in values and gradients
    (for hidden and weight), while holding one chunk of fp32 logits at a time in forward and in
    backward (where the chunk's logits are recomputed). For the response token at sequence
    position t, pass the hidden state at t - 1.

    Args:
        hidden_TD: final hidden states (after the last norm).
        lm_head_weight_VD: the LM head's weight (a plain tensor, already gathered under FSDP).
        labels_T: token ids whose log-probs are wanted.
        temperature: sampling temperature the logits are divided by (> 0).
        chunk_tokens: rows of logits computed at once; memory is about 3 x C x V x 4 bytes.
        with_entropy: also return the entropy of each row's temperature-scaled distribution.

    Returns:
        ``(logprobs_T, entropy_T)`` in fp32; ``entropy_T`` is None unless ``with_entropy``.

    Shape:
        hidden_TD: (T, D); lm_head_weight_VD: (V, D); labels_T: (T,) long. Returns (T,), (T,).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be > 0, got {chunk_tokens}")
    logprobs, entropy = _TokenLogprobs.apply(
        hidden_TD, lm_head_weight_VD, labels_T.long(), float(temperature), int(chunk_tokens), with_entropy
    )
    return logprobs, (entropy if with_entropy else None)
