"""The decode step's GEMMs at batch 256: cuBLAS (``F.linear``) against a plain and a split-K Triton GEMM.

Qwen2.5-0.5B shapes (hidden 896, intermediate 4864, vocabulary 151936; q/k/v and gate/up fused as
the native engine fuses them), bf16, M = 256 rows, timed inside CUDA graphs
(``triton.testing.do_bench_cudagraph``) so launch overhead is left out. For each shape it prints
cuBLAS's time, cuBLASLt's (``torch.backends.cuda.preferred_blas_library("cublaslt")``), the best of
48 Triton configurations (tile sizes, pipeline stages, warps), the best split-K Triton GEMM (the K
range cut over 2-8 programs per tile that add fp32 partials atomically; the zero fill and the cast
to bf16 are timed with it) and the time the bytes alone would take at 4.2 TB/s. Split-K is for the
shapes whose N gives few output tiles at M = 256 (``o``, ``down``): one tile per program leaves
most of the SMs idle. The plain Triton GEMM is how ``docs/performance.md`` decided against a
hand-written decode GEMM (cuBLAS won at every shape).

Usage (GPU only, about four minutes):
    python benchmarks/decode_gemms.py [--shapes o down] [--skip-plain]
"""

from __future__ import annotations

import argparse
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


@triton.jit
def _split_k_kernel(
    a_ptr, w_ptr, c_ptr, M, N, K, K_PER: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ATOMIC: tl.constexpr,
):  # fmt: skip
    """A[:, ks] @ W[:, ks].T over program 1's share ks of K: added to fp32 C atomically, or (not
    ATOMIC) stored as partial ``split`` of C (splits, M, N), summed afterwards in a fixed order."""
    pid, split = tl.program_id(0), tl.program_id(1)
    num_m = tl.cdiv(M, BM)
    pid_m, pid_n = pid % num_m, pid // num_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    k0 = split * K_PER
    rk = k0 + tl.arange(0, BK)
    a = a_ptr + rm[:, None] * K + rk[None, :]
    w = w_ptr + rn[None, :] * K + rk[:, None]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K_PER, BK):
        ok = rk + k < tl.minimum(k0 + K_PER, K)
        av = tl.load(a, mask=(rm[:, None] < M) & ok[None, :], other=0.0)
        wv = tl.load(w, mask=(rn[None, :] < N) & ok[:, None], other=0.0)
        acc = tl.dot(av, wv, acc)
        a += BK
        w += BK
    ok = (rm[:, None] < M) & (rn[None, :] < N)
    if ATOMIC:
        tl.atomic_add(c_ptr + rm[:, None] * N + rn[None, :], acc, mask=ok, sem="relaxed")
    else:
        tl.store(c_ptr + split * M * N + rm[:, None] * N + rn[None, :], acc, mask=ok)


def triton_mm(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor, config: tuple[int, ...]) -> None:
    bm, bn, bk, stages, warps = config
    grid = (triton.cdiv(a.shape[0], bm) * triton.cdiv(w.shape[0], bn),)
    _mm_kernel[grid](
        a, w, out, a.shape[0], w.shape[0], a.shape[1], BM=bm, BN=bn, BK=bk, num_stages=stages, num_warps=warps
    )


def split_k_mm(
    a: torch.Tensor,
    w: torch.Tensor,
    acc: torch.Tensor,
    out: torch.Tensor,
    config: tuple[int, ...],
    atomic: bool,
) -> None:
    """``out = a @ w.T`` by split-K; ``acc``: fp32 (M, N) when ``atomic``, else (splits, M, N)."""
    bm, bn, bk, splits, stages, warps = config
    k = a.shape[1]
    k_per = triton.cdiv(triton.cdiv(k, splits), bk) * bk
    grid = (triton.cdiv(a.shape[0], bm) * triton.cdiv(w.shape[0], bn), triton.cdiv(k, k_per))
    if atomic:
        acc.zero_()
    _split_k_kernel[grid](
        a, w, acc, a.shape[0], w.shape[0], k, K_PER=k_per, BM=bm, BN=bn, BK=bk, ATOMIC=atomic,
        num_stages=stages, num_warps=warps,
    )  # fmt: skip
    out.copy_(acc if atomic else acc[: grid[1]].sum(0))


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
    lt_us = _cublaslt_us(a, w)
    split_us, split_best = _best_split_k(a, w, ref, atomic=True) if n < 4096 else (float("nan"), None)
    fixed_us, fixed_best = _best_split_k(a, w, ref, atomic=False) if n < 4096 else (float("nan"), None)
    floor_us = (n * k + ROWS * k + ROWS * n) * 2 / BANDWIDTH * 1e6
    print(
        f"{name:8s} N={n:6d} K={k:5d}  cuBLAS {cublas_us:7.2f} us  cuBLASLt {lt_us:7.2f} us"
        f"  Triton {best_us:7.2f} us {best}  split-K atomic {split_us:7.2f} us {split_best}"
        f"  split-K fixed order {fixed_us:7.2f} us {fixed_best}"
        f"  bytes at {BANDWIDTH / 1e12:.1f} TB/s {floor_us:6.2f} us",
        flush=True,
    )


def _cublaslt_us(a: torch.Tensor, w: torch.Tensor) -> float:
    before = torch.backends.cuda.preferred_blas_library()
    try:
        torch.backends.cuda.preferred_blas_library("cublaslt")
        return do_bench_cudagraph(lambda: F.linear(a, w), rep=50) * 1e3
    finally:
        torch.backends.cuda.preferred_blas_library(before)


def _best_split_k(
    a: torch.Tensor, w: torch.Tensor, ref: torch.Tensor, atomic: bool
) -> tuple[float, tuple[int, ...] | None]:
    acc = torch.empty((1 if atomic else 8, *ref.shape), device="cuda", dtype=torch.float32)
    acc = acc[0] if atomic else acc
    out = torch.empty_like(ref)
    best_us, best = float("inf"), None
    for config in itertools.product((64, 128), (32, 64), (64, 128), (2, 4, 8), (3,), (4,)):
        try:
            split_k_mm(a, w, acc, out, config, atomic)
        except Exception:  # out of shared memory or registers at this configuration
            continue
        if not torch.allclose(out.float(), ref.float(), atol=0.05, rtol=0.02):
            print(f"split-K GEMM {config} disagrees with cuBLAS; left out")
            continue
        us = do_bench_cudagraph(lambda c=config: split_k_mm(a, w, acc, out, c, atomic), rep=20) * 1e3
        if us < best_us:
            best_us, best = us, config
    return best_us, best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--skip-plain", action="store_true", help="leave out the plain Triton GEMM's sweep")
    args = parser.parse_args()
    torch.manual_seed(0)
    configs = (
        []
        if args.skip_plain
        else list(itertools.product((64, 128), (64, 128, 256), (64, 128), (3, 4), (4, 8)))
    )
    for name in args.shapes:
        bench_shape(name, *SHAPES[name], configs)


if __name__ == "__main__":
    main()
