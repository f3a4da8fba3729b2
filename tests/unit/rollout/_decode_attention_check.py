"""Checks of ``rlkit.rollout.attention_kernel`` against masked SDPA, run under Triton's CPU interpreter.

``TRITON_INTERPRET=1`` must be in the environment before the kernel is imported, so
``test_decode_attention.py`` runs this module in a subprocess (``python -m rollout._decode_attention_check``
with ``tests/unit`` on the path), which prints one JSON object ``{check: "ok" | error}`` as its last
line and exits non-zero when a check fails. Each check raises on a mismatch.

Sizes: B=5 rows of S=7 slots, L=40 positions, K=2 kv heads, Dh=16; lengths 1 (a single key), 23 and
17 (not a multiple of any key block), 40 (the whole slot) and 33. Every kernel call also runs with 16-key
blocks (several blocks, a masked tail) and with the keys split in three chunks (the merge kernel, and
chunks past a short length that hold no key). Cache positions past each length hold NaN, so a
read past the length shows.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ._interpreter import run_checks

B, SLOTS, L, K, DH = 5, 7, 40, 2, 16
LENGTHS = [1, 23, 40, 17, 33]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
CONFIGS: list[dict[str, int]] = [{}, {"block_n": 16}, {"block_n": 16, "num_splits": 3}]


@contextlib.contextmanager
def env(name: str, value: str | None) -> Iterator[None]:
    """``os.environ[name]`` set to ``value`` (removed when None) for the block."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def pack(q_BHD: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """``q_packed[b * G + g, j] = q_BHD[b, j * G + g]`` (``KVCache.pack_queries``), contiguous."""
    b, heads, dh = q_BHD.shape
    group = heads // kv_heads
    return q_BHD.view(b, kv_heads, group, dh).transpose(1, 2).reshape(b * group, kv_heads, dh).contiguous()


def reference(q_BHD: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """fp32 SDPA of each row's query over its slot, masked to the slot's first ``length`` keys."""
    b, slot_len = q_BHD.shape[0], k.shape[1]
    mask = (torch.arange(slot_len)[None, :] < lengths.long()[:, None])[:, None, None, :]
    k_, v_ = (t[:b].float().transpose(1, 2) for t in (k, v))
    out = F.scaled_dot_product_attention(q_BHD.float()[:, :, None], k_, v_, attn_mask=mask, enable_gqa=True)
    return out[:, :, 0]


def random_case(
    dtype: torch.dtype, heads: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries (B, H, Dh) and a key/value cache (S, L, K, Dh) of ``dtype``, lengths (B,) int32."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, heads, DH, generator=g) * 2).to(dtype)  # * 2: peaked softmax rows too
    k, v = (torch.randn(SLOTS, L, K, DH, generator=g).to(dtype) for _ in range(2))
    return q, k, v, torch.tensor(LENGTHS, dtype=torch.int32)


def poison_past_lengths(cache: torch.Tensor, lengths: torch.Tensor) -> None:
    """NaN at every position at or past each row's length (and in the unused slots)."""
    past = torch.arange(cache.shape[1])[None, :] >= lengths.long()[:, None]
    cache[: lengths.shape[0]][past] = float("nan")
    cache[lengths.shape[0] :] = float("nan")


def assert_close(ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    assert ours.dtype == dtype and ours.shape == ref.shape, f"{name}: {ours.dtype}{tuple(ours.shape)}"
    err = (ours.float() - ref).abs().max().item()
    assert err <= TOLERANCE[dtype], f"{name}: max abs error {err}"


def check_kernel(dtype: torch.dtype, group: int, seed: int = 0) -> None:
    """The kernel in every configuration of CONFIGS against the fp32 reference."""
    from rlkit.rollout.attention_kernel import decode_attention

    q, k, v, lengths = random_case(dtype, K * group, seed)
    ref = pack(reference(q, k, v, lengths), K)
    poison_past_lengths(k, lengths)
    poison_past_lengths(v, lengths)
    q_packed = pack(q, K)
    for config in CONFIGS:
        out = decode_attention(q_packed, k, v, lengths, L, **config)
        assert_close(out, ref, dtype, f"G={group} {config}")
        # the model's (B, H, Dh) layout written directly: the reference before packing
        unpacked = decode_attention(q_packed, k, v, lengths, L, unpacked_out=True, **config)
        assert torch.equal(pack(unpacked, K), out), f"G={group} {config}: unpacked output differs"


def check_scale_and_max_len() -> None:
    """An explicit scale; a ``max_len`` below L (lengths are clamped to it); int64 lengths."""
    from rlkit.rollout.attention_kernel import decode_attention

    q, k, v, lengths = random_case(torch.float32, 2 * K, seed=1)
    ref = reference(q * (0.3 * DH**0.5), k, v, lengths)
    out = decode_attention(pack(q, K), k, v, lengths.long(), L, scale=0.3, block_n=16, num_splits=2)
    assert_close(out, pack(ref, K), torch.float32, "scale 0.3")
    short = 20
    ref = reference(q, k, v, lengths.clamp(max=short))
    for config in CONFIGS:
        out = decode_attention(pack(q, K), k, v, lengths, short, **config)
        assert_close(out, pack(ref, K), torch.float32, f"max_len {short} {config}")


def check_lengths_change_between_calls() -> None:
    """The same buffers with the lengths rewritten in place (what a CUDA-graph replay sees)."""
    from rlkit.rollout.attention_kernel import decode_attention

    q, k, v, lengths = random_case(torch.bfloat16, 3 * K, seed=2)
    q_packed = pack(q, K)
    for new in ([40, 1, 2, 39, 16], [3, 40, 40, 1, 24]):
        lengths.copy_(torch.tensor(new, dtype=torch.int32))
        for config in CONFIGS:
            out = decode_attention(q_packed, k, v, lengths, L, **config)
            assert_close(out, pack(reference(q, k, v, lengths), K), torch.bfloat16, f"{new} {config}")


def check_cache_paths() -> None:
    """``KVCache`` picks the kernel for bf16/fp16 (not fp32, not Dh=12, not under the env override)
    and its ``attend``/``attend_packed`` on that path equal its SDPA path."""
    from rlkit.rollout.kv_cache import KVCache

    def make(dtype: torch.dtype, dh: int = DH, heads: int = 6) -> KVCache:
        return KVCache(1, SLOTS, L, K, dh, num_heads=heads, dtype=dtype, device=torch.device("cpu"))

    assert make(torch.float32).decode_path == "sdpa"
    assert make(torch.float16).decode_path == "triton"
    assert make(torch.bfloat16, dh=12).decode_path == "sdpa"
    with env("RLKIT_DECODE_ATTN", "flash"):  # no flash on CPU: back to SDPA
        assert make(torch.bfloat16).decode_path == "sdpa"
    with env("RLKIT_TRITON", "0"):
        assert make(torch.bfloat16).decode_path == "sdpa"
    kernel = make(torch.bfloat16)
    assert kernel.decode_path == "triton" and kernel.reads_used_keys_only
    with env("RLKIT_DECODE_ATTN", "sdpa"):
        sdpa = make(torch.bfloat16)
    assert sdpa.decode_path == "sdpa" and not sdpa.reads_used_keys_only
    q, k, v, lengths = random_case(torch.bfloat16, 6, seed=3)
    for cache in (kernel, sdpa):
        cache.k[0].copy_(k)
        cache.v[0].copy_(v)
    meta = kernel.decode_meta(lengths.long(), L)
    assert meta.used is not None and meta.used.dtype == torch.int32 and meta.mask is None
    ref = sdpa.attend(0, q, sdpa.decode_meta(lengths.long(), L))
    assert_close(kernel.attend(0, q, meta), ref.float(), torch.bfloat16, "attend")
    packed = kernel.attend_packed(0, kernel.pack_queries(q), meta)
    assert torch.equal(packed, kernel.attend(0, q, meta)), "attend_packed != attend"


def check_decode_forward_bf16() -> None:
    """Four decode steps of a tiny bf16 Qwen2 with the kernel's attention vs SDPA's: close logits."""
    from rlkit.rollout.forward import decode_forward
    from rlkit.rollout.fused import fuse_layers
    from rlkit.rollout.kv_cache import KVCache

    from .conftest import hf_tiny, native_copy

    model = native_copy(hf_tiny("qwen2", seed=5)).to(torch.bfloat16)
    cfg = model.config
    fused = fuse_layers(model)
    caches = []
    for path in ("auto", "sdpa"):
        with env("RLKIT_DECODE_ATTN", path):
            caches.append(KVCache.for_model(cfg, 4, 32, dtype=torch.bfloat16, device=torch.device("cpu")))
    assert [c.decode_path for c in caches] == ["triton", "sdpa"]
    g = torch.Generator().manual_seed(3)
    context = [torch.randn(caches[0].k.shape, generator=g) for _ in range(2)]
    for cache in caches:  # earlier tokens of each slot
        cache.k.copy_(context[0])
        cache.v.copy_(context[1])
    tokens = torch.randint(0, cfg.vocab_size, (3,), generator=g)
    positions = torch.tensor([5, 0, 17])
    with torch.no_grad():
        for step in range(4):
            ours, ref = (decode_forward(model, fused, c, tokens, positions, 32) for c in caches)
            err = (ours.float() - ref.float()).abs().max().item()
            assert err <= 5e-2, f"logits of step {step}: max abs error {err}"
            tokens, positions = ref.argmax(-1), positions + 1


CHECKS: dict[str, Callable[[], None]] = {
    **{
        f"kernel_g{group}_{name}": (lambda dt=dt, group=group: check_kernel(dt, group))
        for group in (3, 1, 8)
        for name, dt in DTYPES.items()
        if name != "fp16"
    },
    "kernel_g3_fp16": lambda: check_kernel(torch.float16, 3),
    "scale_and_max_len": check_scale_and_max_len,
    "lengths_change_between_calls": check_lengths_change_between_calls,
    "cache_paths": check_cache_paths,
    "decode_forward_bf16": check_decode_forward_bf16,
}


if __name__ == "__main__":
    sys.exit(run_checks(CHECKS, sys.argv[1:]))
