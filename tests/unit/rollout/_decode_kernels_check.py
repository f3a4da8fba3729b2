"""Checks of ``rlkit.rollout.kernels`` against the eager decode step, run under Triton's CPU interpreter.

``TRITON_INTERPRET=1`` must be in the environment before the kernels are imported, so
``test_decode_kernels.py`` runs this module in a subprocess (``python -m rollout._decode_kernels_check``
with ``tests/unit`` on the path), which prints one JSON object ``{check: "ok" | error}`` as its last
line and exits non-zero when a check fails. Each check raises on a mismatch.

Sizes are deliberately odd (B=3, D=72, Dh=16, H=4, K=2, I=40) so masking and packing bugs show.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ._interpreter import run_checks

B, D, DH, H, K, INTER = 3, 72, 16, 4, 2, 40
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@contextlib.contextmanager
def triton_enabled(on: bool) -> Iterator[None]:
    """``RLKIT_TRITON`` set to 1 or 0 for the block (``use_triton`` reads it on every call)."""
    old = os.environ.get("RLKIT_TRITON")
    os.environ["RLKIT_TRITON"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["RLKIT_TRITON"]
        else:
            os.environ["RLKIT_TRITON"] = old


def assert_matches(ours: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    """fp32: within 1e-5. bf16/fp16: within one unit in the last place, and almost all bits equal."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, f"{name}: {ours.dtype}{tuple(ours.shape)}"
    if ref.dtype == torch.float32:
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
        return
    tol = ref.float().abs().clamp(min=2**-6) * torch.finfo(ref.dtype).eps * 2
    diff = (ours.float() - ref.float()).abs()
    assert bool((diff <= tol).all()), f"{name}: max diff {diff.max().item()}"
    same = (ours == ref).float().mean().item()
    assert same > 0.98, f"{name}: only {same:.3f} of the elements are bitwise equal"


def check_add_rms_norm(dtype: torch.dtype, device: str = "cpu") -> None:
    from rlkit.rollout.kernels import add_rms_norm

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(B, D, generator=g) * 3).to(device, dtype)
    delta = torch.randn(B, D, generator=g).to(device, dtype)
    weight = (1 + 0.3 * torch.randn(D, generator=g)).to(device, dtype)
    eps = 1e-6
    x_new, normed = add_rms_norm(x, delta, weight, eps)
    ref_x = x + delta
    assert_matches(x_new, ref_x, "x + delta")
    assert_matches(normed, weight * F.rms_norm(ref_x, (D,), eps=eps), "normed")
    same_x, normed = add_rms_norm(x, None, weight, eps)
    assert same_x is x
    assert_matches(normed, weight * F.rms_norm(x, (D,), eps=eps), "normed without delta")


def check_rope_kv_write(
    dtype: torch.dtype, device: str = "cpu", *, heads: int = H, kv_heads: int = K, dh: int = DH
) -> None:
    from rlkit.rollout.forward import rope
    from rlkit.rollout.kernels import rope_kv_write
    from rlkit.rollout.kv_cache import KVCache

    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, heads + 2 * kv_heads, dh, generator=g).to(device, dtype)
    angles = torch.rand(B, dh // 2, generator=g).to(device) * 6
    angles = torch.cat((angles, angles), -1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    sin_signed = torch.cat((-sin[:, : dh // 2], sin[:, dh // 2 :]), -1)
    ours, ref = (
        KVCache(2, 4, 8, kv_heads, dh, num_heads=heads, dtype=dtype, device=torch.device(device))
        for _ in range(2)
    )
    flat = torch.tensor([5, 8 + 2, 3 * 8 + 7], device=device)  # slots 0, 1, 3
    k_flat, v_flat = ours.k[1].view(-1, kv_heads, dh), ours.v[1].view(-1, kv_heads, dh)
    q_packed = rope_kv_write(qkv, cos, sin_signed, k_flat, v_flat, flat, heads, kv_heads)
    roped = rope(qkv[:, : heads + kv_heads], cos[:, None], sin_signed[:, None])
    ref.write(1, flat, roped[:, heads:], qkv[:, heads + kv_heads :])
    assert_matches(q_packed, ref.pack_queries(roped[:, :heads]), "packed q")
    assert_matches(ours.k, ref.k, "k cache")
    assert torch.equal(ours.v, ref.v), "v cache"


def check_silu_mul(dtype: torch.dtype, device: str = "cpu") -> None:
    from rlkit.rollout.kernels import silu_mul

    g = torch.Generator().manual_seed(2)
    gate_up = (torch.randn(B, 2 * INTER, generator=g) * 3).to(device, dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    assert_matches(silu_mul(gate_up), F.silu(gate) * up, "silu * up")


def check_decode_forward(dtype: torch.dtype, device: str = "cpu") -> None:
    """Several decode steps of a tiny Qwen2 with and without the kernels: logits, caches, tokens."""
    from rlkit.rollout.forward import decode_forward
    from rlkit.rollout.fused import fuse_layers
    from rlkit.rollout.kv_cache import KVCache

    from .conftest import hf_tiny, native_copy

    model = native_copy(hf_tiny("qwen2", seed=5)).to(device, dtype)
    cfg = model.config
    fused = fuse_layers(model)
    caches = [KVCache.for_model(cfg, 4, 32, dtype=dtype, device=torch.device(device)) for _ in range(2)]
    g = torch.Generator().manual_seed(3)
    context_k, context_v = (
        torch.randn(caches[0].k.shape, generator=g),
        torch.randn(caches[0].v.shape, generator=g),
    )
    for cache in caches:  # earlier tokens of each slot
        cache.k.copy_(context_k)
        cache.v.copy_(context_v)
    tokens = torch.randint(0, cfg.vocab_size, (B,), generator=g).to(device)
    positions = torch.tensor([5, 0, 17], device=device)
    eager, fused_cache = caches
    with torch.no_grad():
        for step in range(4):
            attn_len = int(positions.max()) + 1
            with triton_enabled(False):
                ref = decode_forward(model, fused, eager, tokens, positions, attn_len)
            with triton_enabled(True):
                ours = decode_forward(model, fused, fused_cache, tokens, positions, attn_len)
            assert "rlkit.rollout.kernels" in sys.modules, "the fused path did not run"
            assert_matches(ours, ref, f"logits of step {step}")
            assert torch.equal(ours.argmax(-1), ref.argmax(-1)), f"greedy tokens of step {step}"
            tokens, positions = ref.argmax(-1), positions + 1
    assert_matches(fused_cache.k, eager.k, "k cache")
    assert_matches(fused_cache.v, eager.v, "v cache")


def check_engine_greedy() -> None:
    """The CPU engine's greedy completions and log-probs with the kernels == without (fp32)."""
    from rlkit.rollout import NativeEngine, SamplingParams

    from .conftest import random_prompts, tiny_native

    model = tiny_native(seed=6)
    prompts = random_prompts(3, seed=7)
    params = SamplingParams(temperature=0.0, max_tokens=6)
    runs = []
    for on in (False, True):
        with triton_enabled(on):
            runs.append(NativeEngine(model, max_num_seqs=4).generate(prompts, params))
    for ref_group, group in zip(*runs, strict=True):
        assert group[0].token_ids == ref_group[0].token_ids
        torch.testing.assert_close(group[0].logprobs, ref_group[0].logprobs, atol=1e-5, rtol=0)


CHECKS: dict[str, Callable[[], None]] = {
    **{f"add_rms_norm_{n}": (lambda dt=dt: check_add_rms_norm(dt)) for n, dt in DTYPES.items()},
    "add_rms_norm_fp16": lambda: check_add_rms_norm(torch.float16),
    **{f"rope_kv_write_{n}": (lambda dt=dt: check_rope_kv_write(dt)) for n, dt in DTYPES.items()},
    # 10 head rows and Dh = 12: neither a power of two, so the kernel's masks are exercised
    "rope_kv_write_masked_bf16": lambda: check_rope_kv_write(torch.bfloat16, heads=6, kv_heads=2, dh=12),
    **{f"silu_mul_{n}": (lambda dt=dt: check_silu_mul(dt)) for n, dt in DTYPES.items()},
    **{f"decode_forward_{n}": (lambda dt=dt: check_decode_forward(dt)) for n, dt in DTYPES.items()},
    "engine_greedy": check_engine_greedy,
}


if __name__ == "__main__":
    sys.exit(run_checks(CHECKS, sys.argv[1:]))
