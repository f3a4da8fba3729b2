"""Peak memory of a dense decoder per device and phase, from its ``config.json`` alone (``rlkit plan``).

The numbers follow what rlkit's own code keeps alive, not a generic rule of thumb:

- training state (:mod:`rlkit.training.engine`): fp32 master weights, fp32 gradients and AdamW's
  two fp32 moments, each sharded over the ranks (16 bytes per parameter / world);
- one micro-batch of the update (:func:`update_moments`): its peak is the largest of the moments
  its forward and backward pass through (forward end, the chunked log-prob's backward, the
  backward through the first and the last layer, backward end), each counted from the tensors
  autograd keeps at that moment (:meth:`ModelShape.saved_per_token_layer`), the log-prob's chunks
  and fp32 head-gradient accumulator (:mod:`rlkit.models.logprobs`), the gradients made so far,
  and weights held again in the compute dtype (autocast's casts on one rank, FSDP2's gathered
  units over several); the planner compares it with the optimizer step;
- rollout (:mod:`rlkit.rollout.native`): a full copy of the weights in the compute dtype, the
  KV cache (``slots x max_len`` tokens) and a few logits rows per slot.

Attention is counted as rlkit runs it: the packed flash kernel on CUDA, which keeps no
(length x length) scores, and scaled-dot-product attention over padded sequences on the CPU.
Everything is an estimate of the bytes tensors hold: allocator caching, fragmentation and the
framework's own buffers come on top. tests/unit/models/test_memory.py measures it on the CPU and
tests/gpu/models/test_memory_estimate_gpu.py on one GPU (docs/multi-node.md says how close).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Bytes of training state per parameter: fp32 master weight + fp32 gradient + AdamW's exp_avg, exp_avg_sq.
_WEIGHT_B, _GRAD_B, _ADAM_B = 4, 4, 8
# Layers whose full weights FSDP2 holds gathered at once (the current one and the prefetched next).
_GATHERED_LAYERS = 2
# Logits rows per rollout slot (rlkit.rollout.native._LOGIT_ROWS_PER_SLOT).
_ROLLOUT_LOGIT_ROWS = 6


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder that memory depends on, read from a Hugging Face ``config.json``."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool
    attention_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelShape:
        """From a parsed ``config.json`` (Llama / Qwen2 / Qwen3 keys; biases and q/k norms as
        :meth:`rlkit.models.decoder.DecoderConfig.from_hf` reads them)."""
        kind = hf.get("model_type", "")
        heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hidden // heads),
            tied_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", kind == "qwen2")),
            qk_norm=kind == "qwen3",
        )

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer: attention (with q/k/v biases and q/k norms where the
        architecture has them), MLP, two norms."""
        d, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        extra = (q + 2 * kv if self.attention_bias else 0) + (2 * self.head_dim if self.qk_norm else 0)
        return d * q + 2 * d * kv + q * d + 3 * d * self.intermediate_size + 2 * d + extra

    @property
    def num_params(self) -> int:
        """All parameters: embeddings, layers, final norm, and the LM head unless it is tied."""
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tied_embeddings else embed
        return embed + head + self.num_layers * self.layer_params + self.hidden_size

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V over all layers for one cached token."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    @property
    def head_params(self) -> int:
        """Parameters of the LM head (the embedding's, when tied: its gradient is the head's)."""
        return self.vocab_size * self.hidden_size

    def saved_per_token_layer(self, dtype_bytes: int, *, flash: bool) -> int:
        """Bytes one layer saves for backward per token (autograd's saved tensors, without checkpointing).

        Counted from :class:`rlkit.models.decoder.DecoderLayer` and what autograd keeps for each op:

        - each RMSNorm: its fp32 input (``x.float()``: a fresh copy, or the residual itself when it
          is fp32) for ``x * rsqrt``, the normalized tensor in the compute dtype for ``weight * x``,
          and its output, which the projections after it save: ``4 D + 2 b D``;
        - attention: the rotary products keep only the cos/sin tables (they need no gradient), so of
          the projections' outputs only what the attention kernel saves stays. The flash kernel
          (``flash``, CUDA) keeps the rotated q and k, v and its output, which ``o_proj`` saves
          too: ``b (2 q + 2 kv)``. CPU scaled-dot-product attention keeps the padded copies of q and
          of k and v expanded to the query heads, and its padded output, and ``o_proj`` the gathered
          output: ``5 b q`` (sequences of equal length; padding adds);
        - Qwen3's q/k norms: their fp32 inputs and normalized tensors (their outputs go to the
          rotary products, which do not keep them): ``(4 + b)(q + kv)``;
        - the MLP: gate (for silu), silu(gate) and up (for their product), the product (for
          ``down_proj``): ``4 b I``. Residual additions save nothing.
        """
        b, i = dtype_bytes, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = b * (2 * q + 2 * kv) if flash else 5 * b * q
        qk_norms = (4 + b) * (q + kv) if self.qk_norm else 0
        return 2 * self.norm_saved_per_token(b) + attention + qk_norms + 4 * b * i

    def attention_forward_per_token(self, dtype_bytes: int, *, flash: bool) -> int:
        """Bytes attention's tensors hold per token while its kernel runs, without autograd.

        The rotated q and k and v stay referenced by the caller; the flash kernel (``flash``)
        adds its output: ``b (2 q + 2 kv)``. CPU scaled-dot-product attention adds k and v
        expanded to the query heads, the padded q, k and v, the padded output and the gathered
        one: ``b (8 q + 2 kv)``.
        """
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return dtype_bytes * ((2 * q + 2 * kv) if flash else (8 * q + 2 * kv))

    def norm_saved_per_token(self, dtype_bytes: int) -> int:
        """Bytes an RMSNorm saves per token: its fp32 input, the normalized tensor and the output."""
        return 4 * self.hidden_size + 2 * dtype_bytes * self.hidden_size


@dataclass(frozen=True)
class PhaseMemory:
    """Estimated peak bytes on one device during one phase, by part (a part of 0 is absent);
    ``at`` names the moment of the phase the peak falls on, where it has several."""

    phase: str
    parts: dict[str, int]
    at: str = ""

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def training_state(shape: ModelShape, world: int) -> dict[str, int]:
    """Sharded fp32 weights, gradients and AdamW moments on one device."""
    per = shape.num_params / world
    return {"weights": int(per * _WEIGHT_B), "gradients": int(per * _GRAD_B), "optimizer": int(per * _ADAM_B)}


@dataclass(frozen=True)
class MicroBatchPass:
    """How one micro-batch's forward and backward run: what decides the tensors they hold.

    Args:
        tokens: packed tokens of the micro-batch (all of them gathered for the log-prob).
        dtype_bytes: the compute dtype (activations).
        checkpointing: gradient checkpointing of every decoder layer.
        chunk_tokens: rows of logits the chunked log-prob computes at once.
        cuda: rlkit's CUDA path (flash attention, the Triton log-prob kernels, ``addmm`` with an
            fp32 output); otherwise the CPU one (scaled-dot-product attention, the PyTorch log-prob).
        param_bytes: the dtype of the parameters the device trains (4 for the engine's fp32 master
            weights; 2 for a model cast to bf16, as the GPU test's).
        grad_bytes: gradient bytes per parameter kept on this device (the parameters' dtype on one
            rank; 4 / world for FSDP2's fp32 shards; 0 when offloaded to the host).
        fsdp: FSDP2 runs the module (several ranks, or parameters offloaded): it gathers weights in
            the compute dtype. Without it, parameters wider than the compute dtype mean autocast.
        grads_resident: the gradients of earlier micro-batches of the mini-batch are all there
            (every micro-batch but the first); otherwise they appear as the backward reaches them.
    """

    tokens: int
    dtype_bytes: int
    checkpointing: bool
    chunk_tokens: int = 1024
    cuda: bool = False
    param_bytes: int = 4
    grad_bytes: float = 4
    fsdp: bool = False
    grads_resident: bool = False

    @property
    def autocast(self) -> bool:
        return not self.fsdp and self.param_bytes > self.dtype_bytes


def logprob_forward(shape: ModelShape, p: MicroBatchPass) -> int:
    """Bytes one chunk of :func:`rlkit.models.logprobs.token_logprobs` holds in forward.

    The Triton path: the chunk's raw logits in the compute dtype (``C V b``). The PyTorch path: the
    chunk's fp32 logits and ``logsumexp``'s temporary of the same size (``2 C V 4``).
    """
    rows = min(p.tokens, p.chunk_tokens) * shape.vocab_size
    return rows * p.dtype_bytes if p.cuda else 2 * rows * 4


def logprob_backward(shape: ModelShape, p: MicroBatchPass) -> int:
    """Bytes the chunked log-prob's backward holds at its peak (a chunk's gradient, the accumulator).

    The LM head's gradient accumulates over the chunks in an fp32 (V x D) buffer. A chunk's logits
    are recomputed and turned into their gradient: in place in the compute dtype on the Triton path
    (``C V b``), through fp32 log-probs and their exp on the PyTorch path (``2 C V 4``, plus its cast
    to a lower compute dtype). With an fp32 weight the chunk's product adds in place
    (``addmm_``); with a lower one, ``addmm`` with an fp32 output (CUDA) returns a new accumulator
    beside the old one (``2 V D 4``), elsewhere the product is a (V x D) temporary in that dtype.
    """
    rows = min(p.tokens, p.chunk_tokens) * shape.vocab_size
    acc, b = shape.head_params * 4, p.dtype_bytes
    chunk = rows * b if p.cuda else 2 * rows * 4 + (rows * b if b != 4 else 0)
    if b == 4:
        return acc + chunk
    return acc + (acc if p.cuda else shape.head_params * b) + chunk


def update_moments(shape: ModelShape, p: MicroBatchPass) -> dict[str, dict[str, int]]:
    """Bytes held at each moment of one micro-batch's forward + backward, by part, above what was
    resident before it (weights, optimizer state); the micro-batch's peak is the largest total.

    Per token, ``S`` is one layer's saved tensors (:meth:`ModelShape.saved_per_token_layer`) and
    ``x = D b`` a layer's input. Activations ``A``: ``L S`` without checkpointing; with it each
    layer's input, ``L x`` (non-reentrant checkpointing drops the rest in forward), plus, while the
    backward runs through a layer, that layer's ``S`` again from its recompute. The final norm's
    saved tensors ``F`` live until the log-prob backward. The moments:

    - forward end: ``A + F`` and one forward chunk of the log-prob (:func:`logprob_forward`);
    - log-prob backward: ``A + F``, the hidden states' gradient ``x``, and the chunk's gradient
      with the head's fp32 accumulator(s) (:func:`logprob_backward`);
    - backward through the first and through the last layer (what is held changes linearly in
      between): that layer's ``S``, the MLP's input gradients beyond what it frees (``2 b I``: the
      product's gradient, then silu's and up's, while the product is freed) and the incoming
      gradient ``x``; the activations of the layers still to come; the gradients so far (the
      head's, then each finished layer's);
    - backward end: all gradients, and the embedding's (V x D) gradient while it is added into the
      tied head's.

    The optimizer step holds the gradients and the optimizer state, both resident-sized: the
    planner adds it as its own moment. With ``grads_resident`` every moment holds all gradients.
    Where weights exist again in the compute dtype, :func:`weight_copies` adds them.
    """
    L, t, b = shape.num_layers, p.tokens, p.dtype_bytes
    x, layer_s = t * shape.hidden_size * b, t * shape.saved_per_token_layer(b, flash=p.cuda)
    acts = L * x if p.checkpointing else L * layer_s
    through = 2 * t * shape.intermediate_size * b + x  # the MLP's input gradients + the incoming one
    g_layer, g_head = int(shape.layer_params * p.grad_bytes), int(shape.head_params * p.grad_bytes)
    g_all = int(shape.num_params * p.grad_bytes)
    if p.grads_resident:
        grads = dict.fromkeys(("log-prob backward", "first layer backward", "last layer backward"), g_all)
    else:
        grads = {"first layer backward": g_head + g_layer, "last layer backward": g_head + L * g_layer}
    tied_add = shape.head_params * (b if p.fsdp else p.param_bytes)
    if not p.fsdp and not shape.tied_embeddings:
        tied_add = 0  # the embedding's gradient is a gradient of its own, counted in all of them
    moments = {
        "forward end": {"activations": acts, "logits chunk": logprob_forward(shape, p)},
        "log-prob backward": {
            "activations": acts,
            "logits chunk + head gradient": x + logprob_backward(shape, p),
        },
        "first layer backward": {
            "activations": acts + (layer_s if p.checkpointing else 0),
            "layer backward": through,
        },
        "last layer backward": {
            "activations": layer_s + (x if p.checkpointing else 0),
            "layer backward": through,
        },
        "backward end": {"embedding gradient": tied_add},
    }
    for name in ("forward end", "log-prob backward"):
        moments[name]["final norm"] = t * shape.norm_saved_per_token(b)
    for name in moments.keys() - {"backward end"}:  # cos and sin, kept by every layer's rotary
        moments[name]["rotary tables"] = 2 * t * shape.head_dim * b
    for name, parts in moments.items():
        parts["gradients"] = g_all if name == "backward end" else grads.get(name, 0)
        parts.update(weight_copies(shape, p, name))
    return moments


def weight_copies(shape: ModelShape, p: MicroBatchPass, moment: str) -> dict[str, int]:
    """Weights held again in the compute dtype at ``moment`` of :func:`update_moments`, by part.

    Under autocast (one rank, fp32 parameters) each layer's projections cast their weights: all of
    them are alive at forward end (the autocast cache keeps every cast until the forward returns),
    and without checkpointing through the backward too (the projections save them), with it only
    the recomputed layer's; the LM head's cast (``lm_head.weight.to(dtype)``) lives until the
    log-prob backward ends. Over several ranks FSDP2 holds two layers gathered (the current one and
    the prefetched next) and the root's embedding and head for the whole pass (the root is not
    resharded after forward).
    """
    layer, b = shape.layer_params * p.dtype_bytes, p.dtype_bytes
    head = shape.head_params * b
    if p.fsdp:
        root = head if shape.tied_embeddings else 2 * head
        return {"gathered weights": _GATHERED_LAYERS * layer + root}
    if not p.autocast:
        return {}
    all_layers = shape.num_layers * layer
    casts = {
        "forward end": all_layers + head,
        "log-prob backward": (0 if p.checkpointing else all_layers) + head,
        "first layer backward": layer if p.checkpointing else all_layers,
        "last layer backward": layer,
    }
    return {"weight casts": casts.get(moment, 0)}


def update_peak(shape: ModelShape, p: MicroBatchPass) -> tuple[str, dict[str, int]]:
    """The moment of :func:`update_moments` holding the most, and its parts."""
    return peak_of(update_moments(shape, p))


def peak_of(moments: dict[str, dict[str, int]]) -> tuple[str, dict[str, int]]:
    """The moment holding the most bytes, and its parts."""
    name = max(moments, key=lambda m: sum(moments[m].values()))
    return name, moments[name]


def logprob_pass_moments(shape: ModelShape, p: MicroBatchPass) -> dict[str, dict[str, int]]:
    """Bytes held at each moment of a no-grad log-prob pass over one micro-batch (the old and the
    reference log-probs: :func:`rlkit.training.passes.response_logprobs`), by part.

    Nothing is saved for backward, so one layer's temporaries at a time, the most of them either
    in the MLP: the layer's input (the caller's loop holds it until the layer returns), the
    residual after attention and the MLP's input (``3 x``) with silu(gate), up and their product
    (``3 b I``); or in attention: the layer's and attention's inputs (``2 x``), the rotated q and
    k and v, and the kernel's inputs and output (:meth:`ModelShape.attention_forward_per_token`);
    then the final hidden states and one forward chunk of the log-prob. Under autocast the cache
    keeps every layer's cast weights until the forward returns (no-grad passes cast the same way),
    and the LM head's cast; over several ranks FSDP2 holds two layers and the root gathered.
    """
    t, b = p.tokens, p.dtype_bytes
    x = t * shape.hidden_size * b
    copies = weight_copies(shape, replace(p, checkpointing=False), "forward end")
    if "weight casts" in copies:
        layers = copies["weight casts"] - shape.head_params * b
        layer_copies = {"weight casts": layers}
    else:
        layer_copies = copies
    attention = 2 * x + t * shape.attention_forward_per_token(b, flash=p.cuda)
    rotary = 2 * t * shape.head_dim * b  # cos and sin, for the whole forward
    return {
        "attention forward": {"one layer": attention, "rotary tables": rotary, **layer_copies},
        "MLP forward": {
            "one layer": 3 * x + 3 * t * shape.intermediate_size * b,
            "rotary tables": rotary,
            **layer_copies,
        },
        "log-prob forward": {"hidden states": x, "logits chunk": logprob_forward(shape, p), **copies},
    }


def rollout_cache(shape: ModelShape, slots: int, max_len: int, dtype_bytes: int) -> int:
    """The native engine's KV cache and logits rows for ``slots`` sequences of ``max_len`` tokens."""
    return slots * (
        shape.kv_bytes_per_token(dtype_bytes) * max_len + _ROLLOUT_LOGIT_ROWS * 4 * shape.vocab_size
    )
