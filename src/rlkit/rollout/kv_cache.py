"""Slot-based KV cache and the decode-step attention over it.

Each running sequence owns one slot: a static ``[max_len, K, Dh]`` region of a per-layer buffer,
indexed by token position. Static shapes are what let the decode step be captured in a CUDA graph
once per batch-size bucket; the price is that a slot reserves ``max_len`` tokens whatever the
sequence's length, so ``max_len`` should be the longest prompt plus response of the workload (the
trainer knows it: ``data.max_prompt_length + data.max_response_length``).

Decode attention reads only the used part of each slot where it can, picked once when the cache is
built (``KVCache.decode_path``):

- ``triton``: the decode kernel of :mod:`rlkit.rollout.attention_kernel`, where Triton runs
  (:func:`rlkit.hardware.kernels.use_triton`), the cache is fp16/bf16 and the head dim a power of
  two;
- ``flash``: torch's flash varlen kernel with ``seqused_k`` (CUDA, fp16/bf16; feature-detected);
- ``sdpa``: scaled-dot-product attention with a length mask over the first ``attn_len`` positions
  (everything else: CPU, fp32).

``RLKIT_DECODE_ATTN`` (read when the cache is built) overrides the choice for A/B comparisons:
``flash`` skips the Triton kernel (SDPA where flash is missing), ``sdpa`` forces SDPA, ``auto``
(the default) picks the first that applies.

Shape legend: S = slots, L = max_len, K = kv heads, H = query heads, Dh = head dim, B = decode rows
(slots 0..B-1), N = rows written.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from rlkit.errors import UserError
from rlkit.hardware.kernels import use_triton
from rlkit.models.decoder import DecoderConfig

DecodeAttnFn = Callable[..., torch.Tensor]


@dataclass
class DecodeMeta:
    """Per-step inputs of decode attention, built by :meth:`KVCache.decode_meta` for its path.

    ``used`` (int32 keys per slot) serves the Triton and flash paths, ``cu_q``/``cu_k`` (int32
    offsets of the packed queries and of the slots) only flash, ``mask`` only SDPA.
    """

    attn_len: int
    cu_q: torch.Tensor | None = None
    cu_k: torch.Tensor | None = None
    used: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@cache
def flash_decode_fn() -> DecodeAttnFn | None:
    """``fn(q_QHD, k_XKD, v_XKD, cu_q, cu_k, max_q, max_k, seqused_k) -> o_QHD`` (non-causal), or None.

    The public ``torch.nn.attention.varlen.varlen_attn`` takes ``seqused_k`` in recent torch; older
    builds have it only on ``aten::_flash_attention_forward``. Either reads each slot's keys up to
    the sequence's length and no further, so a decode step costs what the sequences actually hold.
    """
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None  # type: ignore[assignment]
    if varlen_attn is not None and {"seqused_k", "enable_gqa"} <= set(
        inspect.signature(varlen_attn).parameters
    ):

        def via_public(q, k, v, cu_q, cu_k, max_q, max_k, used):  # type: ignore[no-untyped-def]
            return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, enable_gqa=True, seqused_k=used)

        return via_public
    op = getattr(torch.ops.aten, "_flash_attention_forward", None)
    if op is None or "seqused_k" not in str(op.default._schema):
        return None

    def via_aten(q, k, v, cu_q, cu_k, max_q, max_k, used):  # type: ignore[no-untyped-def]
        return op(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, False, False, seqused_k=used)[0]

    return via_aten


def decode_path_for(device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """The decode attention a cache on ``device`` of ``dtype`` runs: "triton", "flash" or "sdpa".

    Args:
        device: The cache's device.
        dtype: The cache's dtype.
        head_dim: Dh; the Triton kernel takes powers of two from 16 to 256.

    Raises:
        UserError: ``RLKIT_DECODE_ATTN`` is set to something other than auto, flash or sdpa.
    """
    choice = os.environ.get("RLKIT_DECODE_ATTN", "auto").strip().lower() or "auto"
    if choice not in ("auto", "flash", "sdpa"):
        raise UserError(
            f"RLKIT_DECODE_ATTN={choice!r} is not a decode attention path", hint="use auto, flash or sdpa"
        )
    half = dtype in (torch.float16, torch.bfloat16)
    if choice == "auto" and half and use_triton(device):
        from rlkit.rollout.attention_kernel import supported

        if supported(head_dim, dtype):
            return "triton"
    if choice != "sdpa" and half and device.type == "cuda" and flash_decode_fn() is not None:
        return "flash"
    return "sdpa"


class KVCache:
    """Per-layer K and V buffers of ``num_slots`` slots of ``max_len`` positions each."""

    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        num_heads: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_layers, num_slots, max_len, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_slots, self.max_len, self.num_heads = num_slots, max_len, num_heads
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.decode_path = decode_path_for(device, dtype, head_dim)
        self._flash = flash_decode_fn() if self.decode_path == "flash" else None
        self._kernel: DecodeAttnFn | None = None
        if self.decode_path == "triton":
            from rlkit.rollout.attention_kernel import decode_attention

            self._kernel = decode_attention

    @classmethod
    def for_model(
        cls, cfg: DecoderConfig, num_slots: int, max_len: int, *, dtype: torch.dtype, device: torch.device
    ) -> KVCache:
        """An empty cache with the layers and heads of the model described by ``cfg``."""
        return cls(
            cfg.num_layers,
            num_slots,
            max_len,
            cfg.num_kv_heads,
            cfg.head_dim,
            num_heads=cfg.num_heads,
            dtype=dtype,
            device=device,
        )

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """Bytes one cached token takes over all layers (K and V)."""
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    @property
    def reads_used_keys_only(self) -> bool:
        """True when decode attention reads only each slot's used keys (Triton kernel or flash)."""
        return self.decode_path != "sdpa"

    def write(self, layer: int, flat_idx_N: torch.Tensor, k_NKD: torch.Tensor, v_NKD: torch.Tensor) -> None:
        """Store keys/values at flat positions ``slot * max_len + position``.

        Shape:
            flat_idx_N: (N,) long, distinct; k_NKD, v_NKD: (N, K, Dh).
        """
        kd = (-1, self.num_kv_heads, self.head_dim)
        self.k[layer].view(kd).index_copy_(0, flat_idx_N, k_NKD)
        self.v[layer].view(kd).index_copy_(0, flat_idx_N, v_NKD)

    def decode_meta(self, lengths_B: torch.Tensor, attn_len: int) -> DecodeMeta:
        """What every layer's decode attention needs, built once per step.

        Args:
            lengths_B: Keys per slot (the current token included), at least 1.
            attn_len: A bound on ``lengths_B`` (static under CUDA graphs): the SDPA path reads this
                many positions; the Triton and flash paths read only ``lengths_B``.

        Shape:
            lengths_B: (B,) integer.
        """
        b, dev = lengths_B.shape[0], lengths_B.device
        if self.decode_path == "triton":
            return DecodeMeta(attn_len, used=lengths_B.to(torch.int32))
        if self._flash is not None:
            group = self.num_heads // self.num_kv_heads
            slots = torch.arange(b + 1, device=dev, dtype=torch.int32)
            return DecodeMeta(
                attn_len, cu_q=slots * group, cu_k=slots * self.max_len, used=lengths_B.to(torch.int32)
            )
        mask = (torch.arange(attn_len, device=dev)[None, :] < lengths_B[:, None])[:, None, None, :]
        return DecodeMeta(attn_len, mask=mask)

    def pack_queries(self, q_BHD: torch.Tensor) -> torch.Tensor:
        """Grouped-query packing of one query per slot, the layout the Triton and flash paths take.

        The G = H / K query heads sharing a kv head become G query rows of that kv head, so the
        kernel reads each slot's keys once per kv head, not once per query head:
        ``q_packed[b * G + g, j] = q_BHD[b, j * G + g]``. ``rlkit.rollout.kernels.rope_kv_write``
        writes this layout directly.

        Shape:
            q_BHD: (B, H, Dh). Returns (B * G, K, Dh).
        """
        b, heads = q_BHD.shape[:2]
        group = heads // self.num_kv_heads
        q = q_BHD.view(b, self.num_kv_heads, group, self.head_dim).transpose(1, 2)
        return q.reshape(b * group, self.num_kv_heads, self.head_dim)

    def _unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pack_queries`: (B * G, K, Dh) -> (B, H, Dh)."""
        group = self.num_heads // self.num_kv_heads
        b = packed.shape[0] // group
        o = packed.view(b, group, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return o.reshape(b, self.num_heads, self.head_dim)

    def attend(self, layer: int, q_BHD: torch.Tensor, meta: DecodeMeta) -> torch.Tensor:
        """Attention of one query per slot 0..B-1 over that slot's cached keys.

        Shape:
            q_BHD: (B, H, Dh). Returns (B, H, Dh).
        """
        if self.decode_path != "sdpa":
            return self.attend_packed(layer, self.pack_queries(q_BHD), meta)
        return self._attend_sdpa(layer, q_BHD, meta)

    def attend_packed(self, layer: int, q_packed: torch.Tensor, meta: DecodeMeta) -> torch.Tensor:
        """:meth:`attend` for queries already in the layout of :meth:`pack_queries`.

        On the SDPA path the queries are unpacked (one copy), so callers that produce packed
        queries work on every device.

        Shape:
            q_packed: (B * G, K, Dh). Returns (B, H, Dh).
        """
        if self._kernel is not None:
            # the cache's max_len, not attn_len: the kernel's split count must not change between
            # eager steps and the captured ones (which pass max_len), so both round alike
            return self._kernel(
                q_packed, self.k[layer], self.v[layer], meta.used, self.max_len, unpacked_out=True
            )
        if self._flash is None:
            return self._attend_sdpa(layer, self._unpack(q_packed), meta)
        group = self.num_heads // self.num_kv_heads
        b = q_packed.shape[0] // group
        flat = (-1, self.num_kv_heads, self.head_dim)
        k, v = self.k[layer, :b].view(flat), self.v[layer, :b].view(flat)
        o = self._flash(q_packed, k, v, meta.cu_q, meta.cu_k, group, meta.attn_len, meta.used)
        return self._unpack(o)

    def _attend_sdpa(self, layer: int, q_BHD: torch.Tensor, meta: DecodeMeta) -> torch.Tensor:
        """Scaled-dot-product attention over the first ``attn_len`` positions, length-masked."""
        b = q_BHD.shape[0]
        k = self.k[layer, :b, : meta.attn_len].transpose(1, 2)
        v = self.v[layer, :b, : meta.attn_len].transpose(1, 2)
        out = F.scaled_dot_product_attention(q_BHD[:, :, None, :], k, v, attn_mask=meta.mask, enable_gqa=True)
        return out[:, :, 0, :]
