"""Token log-probs and entropy from final hidden states, without materialising T x V fp32 logits.

The naive ``log_softmax(hidden @ W.T / temperature)`` holds the whole (T, V) logits in fp32 plus
their gradient: for 16k tokens and a 152k vocabulary that is ~10 GB each. ``token_logprobs``
computes ``chunk_tokens`` rows at a time (logits in the weight's dtype, upcast only that chunk) and,
under autograd, recomputes each chunk's logits in backward, so peak memory holds a few chunks of
logits, never T x V. Values and gradients equal the naive computation (fp32, to ~1e-6).

Where Triton runs (CUDA; see :func:`rlkit.hardware.kernels.use_triton`) each chunk goes through the
kernels of :mod:`rlkit.models.logprob_kernels` instead: one pass over the logits in the GEMM's
dtype for the forward and one for the backward, instead of about a dozen fp32 passes, and a chunk
holds one (C x V) buffer in that dtype rather than several fp32 ones.

Shape legend: T = tokens, D = hidden size, V = vocabulary, C = tokens in a chunk.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from rlkit.hardware.kernels import use_triton

#: Rows of logits a chunk computes where the fused kernels run: a chunk holds its (C x V) logits in
#: the compute dtype (4096 x 152k in bf16 is 1.2 GB), and each chunk reads and writes the fp32
#: (V x D) weight-gradient accumulator once, so larger chunks pay that traffic fewer times
#: (benchmarks/lm_head.py on an H200: 54.1 ms at 1024 rows, 46.5 ms at 4096 for 21,845 rows of the
#: 0.5B shape, 84.4 -> 72.2 ms at hidden 1536). The PyTorch path holds several fp32 (C x V) tensors
#: per chunk, so it keeps 1024.
FUSED_CHUNK_TOKENS = 4096
TORCH_CHUNK_TOKENS = 1024


def default_chunk_tokens(device: torch.device) -> int:
    """Rows of logits per chunk for hidden states on ``device`` (the fused kernels or PyTorch)."""
    return FUSED_CHUNK_TOKENS if use_triton(device) else TORCH_CHUNK_TOKENS


def _chunk_logits(
    h_CD: torch.Tensor, w_VD: torch.Tensor, temperature: float, softcap: float | None = None
) -> torch.Tensor:
    """fp32 temperature-scaled logits (C, V) of one chunk; the matmul runs in the weight's dtype.

    With ``softcap`` the logits are first soft-capped, ``softcap * tanh(logits / softcap)``, as
    Gemma-2 computes its output logits.
    """
    logits = (h_CD.to(w_VD.dtype) @ w_VD.T).float()
    if softcap is not None:
        logits = logits.div_(softcap).tanh_().mul_(softcap)
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
        softcap: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_tokens = hidden_TD.shape[0]
        logprobs = torch.empty(num_tokens, dtype=torch.float32, device=hidden_TD.device)
        lse = torch.empty_like(logprobs)
        entropy = torch.empty(num_tokens if with_entropy else 0, dtype=torch.float32, device=hidden_TD.device)
        fused = softcap is None and use_triton(hidden_TD.device)  # the kernels take plain logits
        for start in range(0, num_tokens, chunk_tokens):
            rows = slice(start, min(start + chunk_tokens, num_tokens))
            if fused:
                stats = _chunk_stats_fused(
                    hidden_TD[rows], weight_VD, labels_T[rows], temperature, with_entropy
                )
            else:
                stats = _chunk_stats_torch(
                    hidden_TD[rows], weight_VD, labels_T[rows], temperature, with_entropy, softcap
                )
            lse[rows], logprobs[rows], ent = stats
            if ent is not None:
                entropy[rows] = ent
        ctx.save_for_backward(hidden_TD, weight_VD, labels_T, lse, entropy)
        ctx.temperature, ctx.chunk_tokens, ctx.with_entropy = temperature, chunk_tokens, with_entropy
        ctx.fused, ctx.softcap = fused, softcap
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
            rows = slice(start, min(start + ctx.chunk_tokens, num_tokens))
            h_CD = hidden_TD[rows].to(weight_VD.dtype)
            g_lp = grad_logprobs[rows] if grad_logprobs is not None else torch.zeros_like(lse[rows])
            args = (
                h_CD,
                weight_VD,
                labels_T[rows],
                lse[rows],
                g_lp.float(),
                ctx.temperature,
                grad_entropy[rows].float() if use_entropy else None,
                entropy[rows] if use_entropy else None,
            )
            grad = _chunk_grad_fused(*args) if ctx.fused else _chunk_grad_torch(*args, softcap=ctx.softcap)
            if grad_h is not None:
                grad_h[rows] = (grad @ weight_VD).to(hidden_TD.dtype)
            if grad_w is not None:
                grad_w = _add_weight_grad(grad_w, grad, h_CD)
            del grad
        grad_w_out = grad_w.to(weight_VD.dtype) if grad_w is not None else None
        return grad_h, grad_w_out, None, None, None, None, None


def _chunk_stats_torch(
    h_CD: torch.Tensor,
    weight_VD: torch.Tensor,
    labels_C: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-sum-exp, label log-prob and entropy (or None) of one chunk, through fp32 logits."""
    logits = _chunk_logits(h_CD, weight_VD, temperature, softcap)
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.sub_(lse[:, None])
    label_logp = logp.gather(-1, labels_C[:, None]).squeeze(-1)
    # -sum p log p is more accurate in fp32 than lse - sum p z (no cancellation)
    entropy = -(logp.exp() * logp).sum(-1) if with_entropy else None
    return lse, label_logp, entropy


def _chunk_stats_fused(
    h_CD: torch.Tensor,
    weight_VD: torch.Tensor,
    labels_C: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`_chunk_stats_torch` in one Triton pass over logits in the weight's dtype."""
    from rlkit.models import logprob_kernels

    raw = h_CD.to(weight_VD.dtype) @ weight_VD.T
    return logprob_kernels.chunk_forward(raw, labels_C, temperature, with_entropy)


def _chunk_grad_torch(
    h_CD: torch.Tensor,
    weight_VD: torch.Tensor,
    labels_C: torch.Tensor,
    lse_C: torch.Tensor,
    g_lp: torch.Tensor,
    temperature: float,
    g_ent: torch.Tensor | None,
    entropy_C: torch.Tensor | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Gradient (C, V) of one chunk's raw logits, in fp32, cast to the weight's dtype at the end."""
    logp = _chunk_logits(h_CD, weight_VD, temperature, softcap).sub_(lse_C[:, None])
    grad = logp.exp()  # probabilities, turned into the logits' gradient in place below
    if g_ent is not None and entropy_C is not None:
        # dH/dz_j = -p_j (log p_j + H)
        logp.add_(entropy_C[:, None]).mul_(g_ent[:, None])
        grad.mul_(logp.add_(g_lp[:, None])).neg_()
    else:
        grad.mul_(-g_lp[:, None])
    grad.scatter_add_(-1, labels_C[:, None], g_lp[:, None])  # d logp_y / dz = onehot - p
    if temperature != 1.0:
        grad.div_(temperature)
    if softcap is not None:  # d(c tanh(z / c))/dz = 1 - tanh(z / c)^2
        z_over_c = _chunk_logits(h_CD, weight_VD, softcap)  # the raw logits divided by the cap
        grad.mul_(z_over_c.tanh_().square_().neg_().add_(1.0))
    return grad.to(weight_VD.dtype)


def _chunk_grad_fused(
    h_CD: torch.Tensor,
    weight_VD: torch.Tensor,
    labels_C: torch.Tensor,
    lse_C: torch.Tensor,
    g_lp: torch.Tensor,
    temperature: float,
    g_ent: torch.Tensor | None,
    entropy_C: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`_chunk_grad_torch` in one Triton pass over the logits, in the weight's dtype."""
    from rlkit.models import logprob_kernels

    return logprob_kernels.chunk_backward_(
        h_CD @ weight_VD.T,
        labels_C,
        lse_C,
        g_lp.contiguous(),
        temperature,
        g_ent.contiguous() if g_ent is not None else None,
        entropy_C,
    )


@cache
def _has_fp32_out_addmm(device_type: str) -> bool:
    """Whether ``torch.addmm(..., out_dtype=torch.float32)`` takes bf16 inputs on this device."""
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device=device_type)
        torch.addmm(torch.zeros(2, 2, device=device_type), a, a, out_dtype=torch.float32)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True


def _add_weight_grad(grad_w: torch.Tensor, grad_CV: torch.Tensor, h_CD: torch.Tensor) -> torch.Tensor:
    """``grad_w + grad_CV.T @ h_CD`` with an fp32 accumulator and low-precision operands.

    The product runs in the operands' dtype: in fp32 a (V x C) @ (C x D) product runs on CUDA cores
    (about 20% of a 0.5B model's update), in bf16 on tensor cores, which accumulate in fp32. Where the BLAS takes an fp32 output for bf16 inputs the product accumulates straight into it (no
    rounding of the chunk's product, no (V x D) temporary); elsewhere the chunk's product is rounded
    once to the operands' dtype, as a bf16 ``nn.Linear``'s weight gradient is.
    """
    if grad_CV.dtype == torch.float32:
        return grad_w.addmm_(grad_CV.T, h_CD)
    if _has_fp32_out_addmm(grad_CV.device.type):
        return torch.addmm(grad_w, grad_CV.T, h_CD, out_dtype=torch.float32)
    return grad_w.add_(grad_CV.T @ h_CD)


def token_logprobs(
    hidden_TD: torch.Tensor,
    lm_head_weight_VD: torch.Tensor,
    labels_T: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
    softcap: float | None = None,
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
        softcap: soft-cap the logits first, ``softcap * tanh(logits / softcap)`` (Gemma-2's
            ``final_logit_softcapping``); None = plain logits. Runs the PyTorch path (no kernels).

    Returns:
        ``(logprobs_T, entropy_T)`` in fp32; ``entropy_T`` is None unless ``with_entropy``.

    Shape:
        hidden_TD: (T, D); lm_head_weight_VD: (V, D); labels_T: (T,) long. Returns (T,), (T,).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be > 0, got {chunk_tokens}")
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap must be > 0, got {softcap}")
    cap = None if softcap is None else float(softcap)
    logprobs, entropy = _TokenLogprobs.apply(
        hidden_TD,
        lm_head_weight_VD,
        labels_T.long(),
        float(temperature),
        int(chunk_tokens),
        with_entropy,
        cap,
    )
    return logprobs, (entropy if with_entropy else None)
