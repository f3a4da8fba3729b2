"""The LM head of a training pass: ``token_logprobs`` forward + backward at several chunk sizes.

The update reads the log-probs of the response tokens only, through chunks of ``C`` rows of
logits (``rlkit.models.logprobs``): the forward is one (C x D) @ (D x V) GEMM and one pass over the
logits per chunk; the backward recomputes the chunk's logits, turns them into their gradient and
runs two more GEMMs, the weight's gradient accumulating into one fp32 (V x D) buffer. Each chunk
reads and writes that buffer once, so small chunks pay its traffic many times; large chunks hold
more logits. This script times the whole head (forward and backward, the way an update calls it)
at each ``--chunks`` size, beside the four GEMMs alone at the largest chunk (the matrix work a
chunk cannot avoid), and reports the peak memory above the inputs.

    python benchmarks/lm_head.py                       # GPU: Qwen2.5 vocabulary, hidden 896
    python benchmarks/lm_head.py --hidden 1536         # the 1.5B shape
    python benchmarks/lm_head.py --tiny                # CPU smoke test
"""

from __future__ import annotations

import argparse

import torch
from _timing import median_seconds

from rlkit.hardware import device as hw
from rlkit.models.logprobs import token_logprobs


def head_step(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int, entropy: bool):
    """One forward + backward of the head, as the update runs it (loss = -mean log-prob)."""

    def run() -> None:
        h = hidden.detach().requires_grad_(True)
        w = weight.detach().requires_grad_(True)
        logp, _ = token_logprobs(h, w, labels, chunk_tokens=chunk, with_entropy=entropy)
        (-logp.mean()).backward()

    return run


def gemms_alone(hidden: torch.Tensor, weight: torch.Tensor, chunk: int):
    """The four GEMMs of the head over all rows (forward, recompute, grad of hidden, grad of weight)."""
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)

    def run() -> None:
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            logits = h @ weight.T
            logits = h @ weight.T
            _ = logits @ weight
            if hidden.is_cuda:  # bf16 operands, fp32 output: what the fused backward accumulates
                torch.addmm(grad_w, logits.T, h, out_dtype=torch.float32)
            else:
                grad_w.addmm_(logits.T.float(), h.float())

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=21_845, help="response rows of one micro-batch")
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--entropy", action="store_true", help="also compute the entropy (the metric)")
    parser.add_argument("--tiny", action="store_true", help="small shapes on CPU")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else hw.torch_device_name())
    if args.tiny:
        args.tokens, args.hidden, args.vocab, args.chunks, args.repeats = 300, 32, 1000, [64, 128], 2
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = (torch.randn(args.tokens, args.hidden, generator=gen) * 0.5).to(device, dtype)
    weight = (torch.randn(args.vocab, args.hidden, generator=gen) * 0.02).to(device, dtype)
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=gen).to(device)
    flop = 4 * 2 * args.tokens * args.hidden * args.vocab
    print(f"device {hw.device_name() if device.type != 'cpu' else 'cpu'}, torch {torch.__version__}, "
          f"{args.tokens} rows x hidden {args.hidden} x vocab {args.vocab}, {dtype}, entropy {args.entropy}")  # fmt: skip
    print("| chunk rows | head fwd+bwd ms | TFLOP/s (4 GEMMs' work) | peak above inputs GiB |")
    print("|---|---|---|---|")
    for chunk in args.chunks:
        run = head_step(hidden, weight, labels, chunk, args.entropy)
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        seconds = median_seconds(run, args.repeats, warmup=2, sync=True)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else float("nan")
        print(f"| {chunk} | {seconds * 1e3:.2f} | {flop / seconds / 1e12:.0f} | {peak:.2f} |")
    floor = median_seconds(gemms_alone(hidden, weight, max(args.chunks)), args.repeats, warmup=2, sync=True)
    print(
        f"four GEMMs alone at chunk {max(args.chunks)}: {floor * 1e3:.2f} ms ({flop / floor / 1e12:.0f} TFLOP/s)"
    )


if __name__ == "__main__":
    main()
