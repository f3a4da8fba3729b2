"""The decode step's GEMMs at batch 256: cuBLAS (``F.linear``) against a plain Triton GEMM.

Qwen2.5-0.5B shapes (hidden 896, intermediate 4864, vocabulary 151936; q/k/v and gate/up fused as
the native engine fuses them), bf16, M = 256 rows, timed inside CUDA graphs
(``triton.testing.do_bench_cudagraph``) so launch overhead is left out. For each shape it prints
cuBLAS's time, the best of 48 Triton configurations (tile sizes, pipeline stages, warps) and the
time the bytes alone would take at 4.2 TB/s. It is how ``docs/performance.md`` decided against a
hand-written decode GEMM: cuBLAS won at every shape.

Usage (GPU only, about three minutes):
    python benchmarks/decode_gemms.py
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.testing import do_bench_cudagraph

ROWS = 256
SHAPES = {  # name: (N, K) of the weight
    "qkv": (1152, 896),
    "o": (896, 896),
    "gate_up": (9728, 896),
    "down": (896, 4864),
    "lm_head": (151936, 896),
}
BANDWIDTH = 4.2e12  # bytes/s, the H200's measured copy bandwidth


@triton.jit
def _mm_kernel(a_ptr, w_ptr, c_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """C = A @ W.T for A (M, K) and W (N, K), both row-major; one (BM, BN) tile per program."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    pid_m, pid_n = pid % num_m, pid // num_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a = a_ptr + rm[:, None] * K + rk[None, :]
    w = w_ptr + rn[None, :] * K + rk[:, None]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        av = tl.load(a, mask=(rm[:, None] < M) & (rk[None, :] + k < K), other=0.0)
        wv = tl.load(w, mask=(rn[None, :] < N) & (rk[:, None] + k < K), other=0.0)
        acc = tl.dot(av, wv, acc)
        a += BK
        w += BK
    c = c_ptr + rm[:, None] * N + rn[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def triton_mm(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor, config: tuple[int, ...]) -> None:
    bm, bn, bk, stages, warps = config
    grid = (triton.cdiv(a.shape[0], bm) * triton.cdiv(w.shape[0], bn),)
    _mm_kernel[grid](
        a, w, out, a.shape[0], w.shape[0], a.shape[1], BM=bm, BN=bn, BK=bk, num_stages=stages, num_warps=warps
    )


def bench_shape(name: str, n: int, k: int, configs: list[tuple[int, ...]]) -> None:
    a = torch.randn(ROWS, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.05
    out = torch.empty(ROWS, n, device="cuda", dtype=torch.bfloat16)
    ref = F.linear(a, w)
    cublas_us = do_bench_cudagraph(lambda: F.linear(a, w), rep=50) * 1e3
    best_us, best = float("inf"), None
    for config in configs:
        bm, bn, bk = config[:3]
        if bm * bn > 128 * 256 or (bk == 128 and bn == 256):
            continue
        try:
            triton_mm(a, w, out, config)
        except Exception:  # out of shared memory or registers at this configuration
            continue
        if not torch.allclose(out.float(), ref.float(), atol=0.05, rtol=0.02):
            print(f"{name}: Triton GEMM {config} disagrees with cuBLAS; left out")
            continue
        us = do_bench_cudagraph(lambda c=config: triton_mm(a, w, out, c), rep=20) * 1e3
        if us < best_us:
            best_us, best = us, config
    floor_us = (n * k + ROWS * k + ROWS * n) * 2 / BANDWIDTH * 1e6
    print(
        f"{name:8s} N={n:6d} K={k:5d}  cuBLAS {cublas_us:7.2f} us  Triton {best_us:7.2f} us {best}"
        f"  bytes at {BANDWIDTH / 1e12:.1f} TB/s {floor_us:6.2f} us",
        flush=True,
    )


def main() -> None:
    torch.manual_seed(0)
    configs = list(itertools.product((64, 128), (64, 128, 256), (64, 128), (3, 4), (4, 8)))
    for name, (n, k) in SHAPES.items():
        bench_shape(name, n, k, configs)


if __name__ == "__main__":
    main()
