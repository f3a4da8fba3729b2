"""The native engine's Triton decode attention at the decode benchmark's shape, over its launch settings.

Qwen2.5-0.5B heads (14 query heads sharing 2 kv heads, head dim 64), bf16, 256 slots whose lengths
spread around 256 keys (128-token prompts half-way through 256 new tokens, what
``benchmarks/rollout.py`` computes its HBM floor at), timed inside CUDA graphs
(``triton.testing.do_bench_cudagraph``). Prints the default settings' time, every setting of keys per
block, warps, pipeline stages and key splits that agrees with the default's output, the best one,
and the time the keys and values alone take to read at 4.2 TB/s.

Usage (GPU only, under a minute):
    python benchmarks/decode_attention.py [--slots 256] [--context 256]
"""

from __future__ import annotations

import argparse
import itertools

import torch
from triton.testing import do_bench_cudagraph

from rlkit.rollout.attention_kernel import decode_attention

KV_HEADS, GROUP, HEAD_DIM = 2, 7, 64
BANDWIDTH = 4.2e12  # bytes/s, the H200's measured copy bandwidth


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--context", type=int, default=256, help="mean keys per slot")
    parser.add_argument("--slot-len", type=int, default=512, help="positions per slot in the cache")
    args = parser.parse_args()
    torch.manual_seed(0)
    b = args.slots
    q = torch.randn(b * GROUP, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, args.slot_len, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    spread = args.context // 4
    lengths = torch.randint(
        args.context - spread, args.context + spread + 1, (b,), device="cuda", dtype=torch.int32
    )
    max_len = args.slot_len

    def run(**kw: int) -> torch.Tensor:
        return decode_attention(q, k, v, lengths, max_len, unpacked_out=True, **kw)

    ref = run()
    default_us = do_bench_cudagraph(lambda: run(), rep=50) * 1e3
    floor_us = float(lengths.sum()) * KV_HEADS * HEAD_DIM * 2 * 2 / BANDWIDTH * 1e6
    print(
        f"default: {default_us:.2f} us   K/V bytes at {BANDWIDTH / 1e12:.1f} TB/s: {floor_us:.2f} us",
        flush=True,
    )
    results = []
    for block_n, warps, stages, splits in itertools.product((64, 128), (2, 4, 8), (2, 3, 4), (1, 2)):
        settings = dict(block_n=block_n, num_warps=warps, num_stages=stages, num_splits=splits)
        try:
            out = run(**settings)
        except Exception:  # out of shared memory or registers at this setting
            continue
        if not torch.allclose(out.float(), ref.float(), atol=2e-2, rtol=2e-2):
            print(f"{settings} disagrees with the default; left out")
            continue
        us = do_bench_cudagraph(lambda s=settings: run(**s), rep=20) * 1e3
        results.append((us, settings))
    results.sort(key=lambda r: r[0])
    for us, settings in results[:12]:
        print(f"{us:7.2f} us  {settings}", flush=True)
    print(f"best: {results[0][0]:.2f} us {results[0][1]} against the default's {default_us:.2f} us")


if __name__ == "__main__":
    main()
