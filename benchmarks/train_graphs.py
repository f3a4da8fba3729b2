"""How much of the actor update's time is host launch overhead: one packed step eager vs in a CUDA graph.

Issue #23 asks for 40% MFU in ``benchmarks/train.py``; its traces show the GPU waiting for the
host through much of the forward and backward (about 35 kernel launches per layer and pass). This
benchmark measures what capturing the step in CUDA graphs would buy, before the engine is built
around it. All variants train rlkit's own decoder (``rlkit.models.CausalLM``, the Qwen2.5-0.5B shape by
default, random weights, fp32 master weights under bf16 autocast, decoder layers compiled as
``model.torch_compile`` does, no activation recompute) on the batch of ``benchmarks/train.py``
(16 sequences, 11,013 real tokens), packed, its token count padded up to a bucket
(``--bucket``, a dummy sequence fills the rest, as a graphed engine would pad):

- ``eager``: the forward (embedding, layers, final norm, the chunked log-prob head on response
  tokens), a policy-gradient loss, backward, global-norm clipping and fused AdamW, launched
  kernel by kernel as the engine does today.
- ``graph fwd+bwd``: the same forward and backward replayed from one CUDA graph (static inputs,
  gradients written into fixed buffers); clipping and AdamW outside.
- ``graph step``: forward, backward, clipping and a capturable fused AdamW all in one graph.
- ``rlkit update``: ``ActorRole.update`` on the unpadded batch (what ``benchmarks/train.py``
  times), for reference.

Each reports the median of ``--steps`` steps after ``--warmup``, tokens/s (real tokens) and MFU with
``benchmarks/train.py``'s FLOP count. The gap between ``eager`` and ``graph`` is the host's share of
the step; ``graph`` against the FLOP count is what the kernels alone reach.

Usage (GPU only):
    python benchmarks/train_graphs.py
    python benchmarks/train_graphs.py --bucket 12288 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from train import device_name, git_commit, make_batch, model_flops

from rlkit.data.batch import Batch
from rlkit.models import CausalLM, init_weights
from rlkit.models.logprobs import token_logprobs
from rlkit.models.shapes import SHAPES


def packed_inputs(batch: Batch, bucket: int, device: torch.device) -> dict[str, Any]:
    """The batch packed (padding removed) and padded to ``bucket`` tokens by one dummy sequence.

    Returns the static inputs of one micro-batch: input ids, positions, cu_seqlens, the longest
    sequence, the response tokens' gather indices (the hidden state before each) and labels, and
    each response token's advantage over the response-token count.
    """
    mask = batch["attention_mask"].bool()
    ids, resp = batch["input_ids"], batch["response_mask"].bool()
    prompt_w = batch["prompts"].shape[1]
    lengths = mask.sum(-1)
    total = int(lengths.sum())
    if total > bucket:
        raise SystemExit(f"--bucket {bucket} is smaller than the batch's {total} tokens")
    pad = bucket - total
    input_ids = torch.cat([ids[mask], torch.zeros(pad, dtype=torch.long)])
    positions = torch.cat([(mask.long().cumsum(-1) - 1)[mask], torch.arange(pad)])
    seq_lens = torch.cat([lengths, torch.tensor([pad])]) if pad else lengths
    cu = torch.nn.functional.pad(seq_lens.cumsum(0), (1, 0)).to(torch.int32)
    # packed index of every kept position, then the response tokens' own positions
    packed_index = torch.full(mask.shape, -1, dtype=torch.long)
    packed_index[mask] = torch.arange(total)
    resp_full = torch.zeros_like(mask)
    resp_full[:, prompt_w:] = resp
    target = packed_index[resp_full]  # packed positions of response tokens
    adv = batch["advantages"].expand_as(resp)[resp].float()
    return {
        "input_ids": input_ids.to(device),
        "positions": positions.to(device),
        "cu_seqlens": cu.to(device),
        "max_len": int(seq_lens.max()),
        "gather": (target - 1).to(device),  # the hidden state before each response token
        "labels": input_ids[target].to(device),
        "weights": (adv / max(1, adv.numel())).to(device),
    }


def build_model(shape: str, device: torch.device) -> CausalLM:
    model = CausalLM(SHAPES[shape])
    init_weights(model, seed=0)
    model.to(device).train()
    for layer in model.model.layers:
        layer.forward = torch.compile(layer.forward)
    return model


def loss_fn(model: CausalLM, inp: dict[str, Any]) -> torch.Tensor:
    """The packed forward and a policy-gradient loss on the response tokens (no host sync)."""
    inner = model.model
    with torch.autocast("cuda", dtype=torch.bfloat16):
        x = inner.embed_tokens(inp["input_ids"]).to(torch.bfloat16)
        cos, sin = inner.rotary(inp["positions"], x.dtype)
        for layer in inner.layers:
            x = layer(x, cos, sin, inp["cu_seqlens"], inp["max_len"])
        hidden = inner.norm(x).index_select(0, inp["gather"])
        logp, _ = token_logprobs(hidden, model.lm_head.weight.to(hidden.dtype), inp["labels"])
    return -(logp * inp["weights"]).sum()


def zero_and_backward(model: CausalLM, params: list[torch.nn.Parameter], inp: dict[str, Any]) -> None:
    """Zero the fixed gradient buffers in place (a graph writes into them), then forward and backward."""
    for p in params:
        p.grad.zero_()  # type: ignore[union-attr]
    loss_fn(model, inp).backward()


def clip_(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global-norm clipping with no host sync (a graph-safe ``clip_grad_norm_``)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)))
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, scale)
    return norm


def median_step(step: Callable[[], Any], warmup: int, steps: int) -> float:
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    steady = times[warmup:]
    print("  steady steps (s): " + " ".join(f"{t:.4f}" for t in steady), flush=True)
    return statistics.median(steady)


def eager_variant(model: CausalLM, inp: dict[str, Any]) -> Callable[[], None]:
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-6, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        loss_fn(model, inp).backward()
        clip_(params, 1.0)
        opt.step()

    return step


def capture(body: Callable[[], None], warmup: int = 3) -> torch.cuda.CUDAGraph:
    """``body`` captured in a CUDA graph, after ``warmup`` runs on a side stream (compilation,
    autotuning and the allocator settle off the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph


def graph_fwd_bwd_variant(model: CausalLM, inp: dict[str, Any]) -> Callable[[], None]:
    """Forward + backward in one CUDA graph; clipping and AdamW launched after each replay."""
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-6, fused=True)
    for p in params:
        p.grad = torch.zeros_like(p)

    def fwd_bwd() -> None:
        zero_and_backward(model, params, inp)

    graph = capture(fwd_bwd)
    graph.replay()
    replayed = [p.grad.clone() for p in params]
    fwd_bwd()  # eager, on the same weights
    worst = max(
        ((r - p.grad).norm() / p.grad.norm().clamp(min=1e-30)).item()
        for r, p in zip(replayed, params, strict=True)
    )
    print(f"  replayed gradients vs eager: largest relative difference {worst:.2e}", flush=True)

    def step() -> None:
        graph.replay()
        clip_(params, 1.0)
        opt.step()

    return step


def graph_step_variant(model: CausalLM, inp: dict[str, Any]) -> Callable[[], None]:
    """The whole step (zeroing, forward, backward, clipping, AdamW) in one CUDA graph."""
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=torch.tensor(1e-6, device="cuda"), fused=True, capturable=True)
    for p in params:
        p.grad = torch.zeros_like(p)

    def body() -> None:
        zero_and_backward(model, params, inp)
        clip_(params, 1.0)
        opt.step()

    return capture(body).replay


def rlkit_update_variant(shape: str, batch: Batch) -> Callable[[], None]:
    """``ActorRole.update`` on the unpadded batch, as ``benchmarks/train.py --no-gc`` times it."""
    import json
    import tempfile
    from pathlib import Path

    from rlkit.training.actor import ActorRole

    folder = tempfile.mkdtemp(prefix="rlkit-graphs-")
    (Path(folder) / "config.json").write_text(json.dumps(SHAPES[shape].to_hf()))
    actor = ActorRole(
        folder,
        lr=1e-6,
        total_steps=10_000,
        micro_batch_tokens=16384,
        gradient_checkpointing=False,
        torch_compile=True,
        init="random",
    )
    return lambda: actor.update(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    parser.add_argument("--bucket", type=int, default=11264, help="packed tokens per step, padded")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument(
        "--variants", default="eager,graph-fwd-bwd,graph-step,rlkit-update", help="comma-separated"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/train_graphs.py needs a CUDA GPU")
    device = torch.device("cuda")
    cfg = SHAPES[args.shape]
    batch = make_batch(cfg, 16, 256, 768, seed=0)
    real = int(batch["attention_mask"].sum())
    flops = model_flops(cfg, batch)
    print(f"device {device_name()}, torch {torch.__version__}, commit {git_commit()}")
    print(
        f"Qwen2.5-{args.shape} shape, {real} real tokens padded to {args.bucket}, median of {args.steps} steps"
    )
    inp = packed_inputs(batch, args.bucket, device)
    rows = []
    for name in args.variants.split(","):
        print(f"{name}:", flush=True)
        torch.cuda.empty_cache()
        if name == "rlkit-update":
            step = rlkit_update_variant(args.shape, batch)
        else:
            model = build_model(args.shape, device)
            make = {
                "eager": eager_variant,
                "graph-fwd-bwd": graph_fwd_bwd_variant,
                "graph-step": graph_step_variant,
            }
            step = make[name](model, inp)
        torch.cuda.reset_peak_memory_stats()
        seconds = median_step(step, args.warmup, args.steps)
        peak = torch.cuda.max_memory_allocated() / 2**30
        rows.append((name, real / seconds, seconds, flops / seconds / (args.peak_tflops * 1e12), peak))
        del step
    print("| variant | tokens/s | median step s | MFU | peak mem GiB |")
    print("|---|---|---|---|---|")
    for name, tps, s, mfu, peak in rows:
        print(f"| {name} | {tps:,.0f} | {s:.4f} | {mfu:.1%} | {peak:.2f} |")


if __name__ == "__main__":
    main()
