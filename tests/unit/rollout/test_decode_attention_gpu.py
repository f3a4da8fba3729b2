"""The Triton decode-attention kernel on a GPU: against flash and SDPA, under CUDA graphs, timed.

The timing test prints (never asserts) microseconds per call of the kernel in a few launch
configurations and of torch's flash varlen kernel, each from a CUDA graph of 100 calls (so Python
launch overhead is out of the number) and from 100 eager calls.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from rlkit.rollout.kv_cache import KVCache, flash_decode_fn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
pytest.importorskip("triton")

# Qwen2.5-0.5B's attention: 14 query heads, 2 kv heads of 64
HEADS, KV_HEADS, DH = 14, 2, 64
GROUP = HEADS // KV_HEADS
ITERS = 100


def make_cache(
    monkeypatch: pytest.MonkeyPatch, path: str, slots: int, max_len: int, dh: int, dtype: torch.dtype
) -> KVCache:
    monkeypatch.setenv("RLKIT_DECODE_ATTN", path)
    cache = KVCache(
        1, slots, max_len, KV_HEADS, dh, num_heads=HEADS, dtype=dtype, device=torch.device("cuda")
    )
    monkeypatch.delenv("RLKIT_DECODE_ATTN")
    return cache


def kernel_and_flash(
    monkeypatch: pytest.MonkeyPatch,
    slots: int,
    max_len: int,
    dh: int = DH,
    dtype: torch.dtype = torch.bfloat16,
) -> tuple[KVCache, KVCache]:
    """A cache on the kernel path and one on the flash path holding the same random keys/values."""
    kernel = make_cache(monkeypatch, "auto", slots, max_len, dh, dtype)
    flash = make_cache(monkeypatch, "flash", slots, max_len, dh, dtype)
    assert (kernel.decode_path, flash.decode_path) == ("triton", "flash")
    kernel.k.normal_()
    kernel.v.normal_()
    flash.k.copy_(kernel.k)
    flash.v.copy_(kernel.v)
    return kernel, flash


def random_lengths(b: int, lo: int, hi: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (b,), generator=g)
    lengths[0], lengths[-1] = lo, hi
    return lengths.cuda()


def reference(cache: KVCache, q_BHD: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """fp32 SDPA over each slot, masked to its first ``length`` keys. Returns (B, H, Dh)."""
    b = q_BHD.shape[0]
    mask = (torch.arange(cache.max_len, device="cuda")[None, :] < lengths[:, None])[:, None, None, :]
    k, v = (t[0, :b].float().transpose(1, 2) for t in (cache.k, cache.v))
    out = F.scaled_dot_product_attention(q_BHD.float()[:, :, None], k, v, attn_mask=mask, enable_gqa=True)
    return out[:, :, 0]


def assert_close(ours: torch.Tensor, ref: torch.Tensor, name: str, atol: float = 2e-2) -> None:
    err = (ours.float() - ref.float()).abs().max().item()
    assert err <= atol, f"{name}: max abs error {err}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_and_flash_match_sdpa_at_qwen_shape(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """B=256, L=384, lengths 1..384: kernel == flash == fp32 SDPA within 2e-2."""
    from rlkit.rollout.attention_kernel import decode_attention

    b, max_len = 256, 384
    kernel, flash = kernel_and_flash(monkeypatch, b, max_len, dtype=dtype)
    lengths = random_lengths(b, 1, max_len, seed=0)
    q = torch.randn(b, HEADS, DH, device="cuda", dtype=dtype)
    ref = reference(kernel, q, lengths)
    ours = kernel.attend(0, q, kernel.decode_meta(lengths, max_len))
    theirs = flash.attend(0, q, flash.decode_meta(lengths, max_len))
    assert ours.dtype == dtype
    assert_close(ours, ref, "kernel vs SDPA")
    assert_close(theirs, ref, "flash vs SDPA")
    assert_close(ours, theirs, "kernel vs flash")
    q_packed, used = kernel.pack_queries(q), lengths.to(torch.int32)
    split = decode_attention(q_packed, kernel.k[0], kernel.v[0], used, max_len, num_splits=4)
    assert_close(split, kernel.pack_queries(ref), "kernel with 4 key splits vs SDPA")


def test_long_context_splits_match_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few slots, 8192 positions, Dh=128: the heuristic splits the keys; the merge matches SDPA."""
    from rlkit.rollout.attention_kernel import num_key_splits

    b, max_len = 4, 8192
    kernel, _ = kernel_and_flash(monkeypatch, b, max_len, dh=128)
    assert num_key_splits(b * KV_HEADS, max_len, torch.device("cuda")) > 1
    lengths = torch.tensor([1, max_len, 3000, 257], device="cuda")
    q = torch.randn(b, HEADS, 128, device="cuda", dtype=torch.bfloat16)
    ours = kernel.attend(0, q, kernel.decode_meta(lengths, max_len))
    assert_close(ours, reference(kernel, q, lengths), "split kernel vs SDPA")


@pytest.mark.parametrize(("b", "max_len"), [(256, 384), (4, 4096)])
def test_graph_replay_with_changed_lengths_equals_eager(
    monkeypatch: pytest.MonkeyPatch, b: int, max_len: int
) -> None:
    """Captured once, replayed with new lengths in the same buffer: bitwise the eager result.

    (4, 4096) splits the keys, so the merge kernel is captured too.
    """
    kernel, _ = kernel_and_flash(monkeypatch, b, max_len)
    q = torch.randn(b, HEADS, DH, device="cuda", dtype=torch.bfloat16)
    q_packed = kernel.pack_queries(q)
    lengths = random_lengths(b, 1, max_len, seed=1)

    def step() -> torch.Tensor:
        return kernel.attend_packed(0, q_packed, kernel.decode_meta(lengths, max_len))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and warm up outside the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for seed in (2, 3):
        lengths.copy_(random_lengths(b, 1, max_len, seed=seed))
        graph.replay()
        eager = step()
        assert torch.equal(out, eager), f"replay with lengths of seed {seed} differs from eager"
        assert_close(out, reference(kernel, q, lengths), f"replay with lengths of seed {seed} vs SDPA")


def time_us(fn: Callable[[], object]) -> tuple[float, float]:
    """Microseconds per call: from a CUDA graph of ITERS calls, and from ITERS eager calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(ITERS):
            fn()
    graph.replay()
    timings = []
    for run in (graph.replay, lambda: [fn() for _ in range(ITERS)]):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        timings.append(start.elapsed_time(end) * 1e3 / ITERS)
    return timings[0], timings[1]


def test_timing_kernel_vs_flash(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Qwen2.5-0.5B decode attention, B=256, contexts 128..384: prints us per layer (not asserted)."""
    from rlkit.rollout.attention_kernel import decode_attention

    b, max_len = 256, 384
    kernel, flash = kernel_and_flash(monkeypatch, b, max_len)
    lengths = random_lengths(b, 128, max_len, seed=4)
    used = lengths.to(torch.int32)
    q_packed = kernel.pack_queries(torch.randn(b, HEADS, DH, device="cuda", dtype=torch.bfloat16))
    k, v = kernel.k[0], kernel.v[0]
    bound_bytes = 2 * int(lengths.sum()) * KV_HEADS * DH * 2 + 2 * q_packed.numel() * 2
    meta = flash.decode_meta(lengths, max_len)
    flash_fn = flash_decode_fn()
    assert flash_fn is not None
    flat = (-1, KV_HEADS, DH)

    def run_flash() -> object:
        return flash_fn(q_packed, k.view(flat), v.view(flat), meta.cu_q, meta.cu_k, GROUP, max_len, meta.used)

    rows = [("flash varlen (seqused_k)", time_us(run_flash))]
    for block_n in (32, 64, 128):
        for num_warps in (2, 4, 8):
            for num_stages in (1, 2, 3):
                kw = dict(block_n=block_n, num_warps=num_warps, num_stages=num_stages)

                def run_kernel(kw: dict[str, int] = kw) -> object:
                    return decode_attention(q_packed, k, v, used, max_len, **kw)

                rows.append((f"triton {kw}", time_us(run_kernel)))
    with capsys.disabled():
        print(
            f"\ndecode attention, {torch.cuda.get_device_name()}, B={b} H={HEADS} K={KV_HEADS} Dh={DH} bf16,"
        )
        print(f"contexts {int(lengths.min())}..{int(lengths.max())} (mean {lengths.float().mean():.0f})")
        print(f"{'':58s} graph us   eager us   GB/s (graph)")
        for name, (graphed, eager) in rows:
            print(f"{name:58s} {graphed:8.2f}   {eager:8.2f}   {bound_bytes / graphed / 1e3:8.0f}")
