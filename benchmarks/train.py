"""Actor-update throughput and MFU: rlkit's training engine vs. a plain transformers training step.

Both sides train the same architecture (by default Qwen2.5-0.5B-shaped, random weights) on the same
batch of 16 sequences x 1024 positions (left-padded prompts, right-padded responses of varied
length, as rollouts come back), with fp32 master weights, bf16 compute, gradient checkpointing
(``--no-gc``: none) and fused AdamW, one optimizer step per iteration:

- ``rlkit``: ``ActorRole.update`` (one process: the engine's single-rank path, a plain module under
  autocast): padding removed (packed varlen attention), micro-batches by token budget, log-probs
  through the chunked LM head (Triton kernels on GPU) on response tokens only, decoder layers
  compiled on accelerators as ``model.torch_compile`` does (``--no-compile``: eager).
- ``rlkit-megatron`` (with ``--strategy megatron``, beside ``rlkit``): the same ``ActorRole.update``
  on the Megatron-core engine (``actor.strategy=megatron``, TP = 1): Megatron's ``GPTModel`` with
  its local layer spec (no transformer-engine), eager, activation recompute by Megatron.
- ``transformers``: ``AutoModelForCausalLM`` with SDPA attention on the padded batch under
  ``torch.autocast``, full logits and cross entropy on the response positions (the usual
  Hugging Face recipe), micro-batches of ``--baseline-micro-batch`` sequences.

By default each side makes one forward/backward pass over the whole batch (16384-token budget,
16 sequences); ``--micro-batch-tokens 8192 --baseline-micro-batch 8`` gives two passes each.

Throughput counts real (non-padding) tokens. MFU = model FLOPs per second / ``--peak-tflops``, with
model FLOPs = 6 x (non-embedding parameters) x tokens + 6 x V x D x response tokens (the LM head is
needed on response tokens only) + 12 x layers x heads x head_dim x context per token (attention,
not halved for causality, as torchtitan counts it); recomputation by gradient checkpointing is not
counted (MFU, not HFU).

Usage:
    python benchmarks/train.py                    # on a GPU: the 0.5B table
    python benchmarks/train.py --peak-tflops 1979 # another card's bf16 dense peak
    python benchmarks/train.py --tiny             # CPU smoke test (a few seconds)
    python benchmarks/train.py --strategy megatron --skip-baseline   # FSDP and Megatron engines (GPU)
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rlkit.data.batch import Batch
from rlkit.hardware import device as hw
from rlkit.models import DecoderConfig
from rlkit.models.shapes import SHAPES, TINY


@dataclass
class Result:
    name: str
    tokens_per_s: float
    step_s: float
    mfu: float
    peak_mem_gib: float


def make_batch(cfg: DecoderConfig, batch_size: int, prompt_len: int, response_len: int, seed: int) -> Batch:
    """Rollout-shaped batch: prompts of 50-100% and responses of 25-100% of their widths."""
    gen = torch.Generator().manual_seed(seed)
    pad = cfg.pad_token_id or 0
    prompts = torch.full((batch_size, prompt_len), pad, dtype=torch.long)
    responses = torch.full((batch_size, response_len), pad, dtype=torch.long)
    prompt_mask = torch.zeros(batch_size, prompt_len, dtype=torch.long)
    response_mask = torch.zeros(batch_size, response_len, dtype=torch.long)
    for i in range(batch_size):
        pl = int(torch.randint(prompt_len // 2, prompt_len + 1, (1,), generator=gen))
        rl = int(torch.randint(max(1, response_len // 4), response_len + 1, (1,), generator=gen))
        prompts[i, prompt_len - pl :] = torch.randint(0, cfg.vocab_size, (pl,), generator=gen)
        responses[i, :rl] = torch.randint(0, cfg.vocab_size, (rl,), generator=gen)
        prompt_mask[i, prompt_len - pl :] = 1
        response_mask[i, :rl] = 1
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    advantages = torch.randn(batch_size, 1, generator=gen) * response_mask
    return Batch(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "response_mask": response_mask.float(),
            "advantages": advantages.float(),
        },
        meta={"temperature": 1.0},
    )


def model_flops(cfg: DecoderConfig, batch: Batch) -> float:
    """Model FLOPs of one training step (forward + backward) on the batch's real tokens."""
    mask = batch.tensors["attention_mask"]
    lengths = mask.sum(-1).double()
    tokens = float(lengths.sum())
    response_tokens = float(batch.tensors["response_mask"].sum())
    d, v = cfg.hidden_size, cfg.vocab_size
    q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    attn_params = d * (q_dim + 2 * kv_dim) + q_dim * d
    mlp_params = 3 * d * cfg.intermediate_size
    body = cfg.num_layers * (attn_params + mlp_params)
    context = float((lengths**2).sum()) / tokens  # mean attended length per token
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context
    return 6 * body * tokens + 6 * v * d * response_tokens + attention * tokens


def _timed(step: Any, warmup: int, steps: int) -> float:
    """The median seconds of ``steps`` steps after ``warmup`` (each step timed to a device sync)."""
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        hw.synchronize()
        times.append(time.perf_counter() - start)
        if i == 0:
            print(f"first step (compilation included): {times[0]:.1f} s")
    steady = times[warmup:]
    print("steady steps (s): " + " ".join(f"{t:.3f}" for t in steady))
    return statistics.median(steady)


def bench_rlkit(
    model_dir: str, batch: Batch, args: argparse.Namespace, strategy: str = "fsdp"
) -> tuple[float, float]:
    from rlkit.training.actor import ActorRole

    actor = ActorRole(
        model_dir,
        strategy=strategy,
        dtype=args.dtype,
        gradient_checkpointing=not args.no_gc,
        lr=1e-6,
        total_steps=args.warmup + args.steps + 1,
        micro_batch_tokens=args.micro_batch_tokens,
        torch_compile=args.compile,
        init="random",
    )
    hw.reset_peak_memory_stats()
    step_s = _timed(lambda: actor.update(batch), args.warmup, args.steps)
    peak = hw.max_memory_allocated() / 2**30
    if args.sync_debug:
        report_syncs(lambda: actor.update(batch))
    if args.trace is not None:
        trace_step(lambda: actor.update(batch), args.trace / "rlkit_update")
    return step_s, peak


def report_syncs(step: Any) -> None:
    """One more ``step()`` with CUDA's sync debug mode: where the host waits for the GPU, by call site."""
    import traceback
    import warnings

    sites: dict[str, int] = {}

    def record(message: Any, *args: Any, **kwargs: Any) -> None:
        frames = [
            f for f in traceback.extract_stack()[:-2] if "/rlkit/" in f.filename or "benchmarks" in f.filename
        ]
        site = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.line}" for f in reversed(frames[-3:]))
        sites[site] = sites.get(site, 0) + 1

    torch.cuda.set_sync_debug_mode("warn")
    old = warnings.showwarning
    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            step()
    finally:
        warnings.showwarning = old
        torch.cuda.set_sync_debug_mode("default")
    print(f"--- host waits for the GPU in one step: {sum(sites.values())}")
    for site, count in sorted(sites.items(), key=lambda kv: -kv[1]):
        print(f"{count:4d}  {site}")


def trace_step(step: Any, out: Path, rows: int = 30) -> None:
    """One more ``step()`` under the torch profiler: a chrome trace at ``out``.json and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if hw.device_type() == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        step()
        hw.synchronize()
    out.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out) + ".json")
    sort = "self_cuda_time_total" if hw.device_type() == "cuda" else "self_cpu_time_total"
    print(f"--- {out.name}: top {rows} by {sort}")
    print(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60))


def bench_transformers(cfg: DecoderConfig, batch: Batch, args: argparse.Namespace) -> tuple[float, float]:
    from transformers import AutoConfig, AutoModelForCausalLM

    device = hw.current_device(0)
    hf_config = AutoConfig.for_model(**cfg.to_hf())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa").float().to(device)
    if not args.no_gc:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5 name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    fused = device.type != "cpu"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01, fused=fused)
    compute_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[_dtype_name(args)]
    data = {k: v.to(device) for k, v in batch.tensors.items()}
    p = batch.tensors["prompts"].shape[1]
    num_tokens = data["response_mask"].sum()

    def step() -> None:
        for start in range(0, len(batch), args.baseline_micro_batch):
            rows = slice(start, start + args.baseline_micro_batch)
            with torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
                logits = model(
                    input_ids=data["input_ids"][rows],
                    attention_mask=data["attention_mask"][rows],
                    position_ids=data["position_ids"][rows],
                    use_cache=False,
                ).logits
            logits = logits[:, p - 1 : -1].float()
            logp = -F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), data["responses"][rows].reshape(-1), reduction="none"
            ).view_as(data["responses"][rows])
            mask = data["response_mask"][rows]
            loss = -(logp * data["advantages"][rows] * mask).sum() / num_tokens
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    hw.reset_peak_memory_stats()
    step_s = _timed(step, args.warmup, args.steps)
    peak = hw.max_memory_allocated() / 2**30
    return step_s, peak


def _dtype_name(args: argparse.Namespace) -> str:
    if args.dtype == "auto":
        return "float32" if hw.device_type() == "cpu" else "bfloat16"
    return args.dtype


def device_name() -> str:
    if hw.device_type() == "cpu":
        return f"CPU ({platform.processor() or platform.machine()})"
    accel = getattr(torch, hw.torch_device_name())
    return str(accel.get_device_name())


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def print_table(results: list[Result], header: dict[str, str]) -> None:
    for key, value in header.items():
        print(f"{key:>14}: {value}")
    print(
        f"| {'implementation':<14} | {'tokens/s':>10} | {'step s':>8} | {'MFU':>6} | {'peak mem GiB':>12} |"
    )
    print(f"|{'-' * 16}|{'-' * 12}|{'-' * 10}|{'-' * 8}|{'-' * 14}|")
    for r in results:
        print(
            f"| {r.name:<14} | {r.tokens_per_s:>10.0f} | {r.step_s:>8.3f} | {100 * r.mfu:>5.1f}% | {r.peak_mem_gib:>12.2f} |"
        )
    by_name = {r.name: r.tokens_per_s for r in results}
    if by_name.get("transformers"):
        print(f"speed-up rlkit / transformers: {by_name['rlkit'] / by_name['transformers']:.2f}x")
    if by_name.get("rlkit-megatron"):
        print(f"rlkit FSDP / rlkit Megatron: {by_name['rlkit'] / by_name['rlkit-megatron']:.2f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model and batch (CPU smoke test)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument("--prompt-len", type=int, default=256, help="prompt width (left-padded)")
    parser.add_argument("--response-len", type=int, default=768, help="response width (right-padded)")
    parser.add_argument(
        "--micro-batch-tokens", type=int, default=16384, help="rlkit token budget per micro-batch"
    )
    parser.add_argument(
        "--baseline-micro-batch", type=int, default=16, help="transformers sequences per micro-batch"
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rlkit: torch.compile each decoder layer (default: on accelerators, as model.torch_compile)",
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    parser.add_argument("--no-gc", action="store_true", help="disable gradient checkpointing on both sides")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b", help="Qwen2.5 model shape")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--strategy",
        choices=["fsdp", "megatron"],
        default="fsdp",
        help="megatron: also time the Megatron-core engine (actor.strategy=megatron) beside FSDP",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--sync-debug", action="store_true", help="report where one more rlkit step waits for the GPU"
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="profile one more rlkit step: chrome trace + kernel table here",
    )
    args = parser.parse_args(argv)
    if args.compile is None:
        args.compile = hw.device_type() != "cpu"
    if args.tiny:
        args.batch_size, args.prompt_len, args.response_len = 4, 16, 48
        args.micro_batch_tokens, args.baseline_micro_batch = 128, 2
        args.warmup, args.steps = min(args.warmup, 1), min(args.steps, 2)
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    cfg = TINY if args.tiny else SHAPES[args.shape]
    batch = make_batch(cfg, args.batch_size, args.prompt_len, args.response_len, seed=0)
    tokens = float(batch.tensors["attention_mask"].sum())
    flops = model_flops(cfg, batch)
    created_group = not dist.is_initialized()
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(cfg.to_hf()))
        runs = [("rlkit", lambda: bench_rlkit(tmp, batch, args))]
        if args.strategy == "megatron":
            runs.append(("rlkit-megatron", lambda: bench_rlkit(tmp, batch, args, "megatron")))
        if not args.skip_baseline:
            runs.append(("transformers", lambda: bench_transformers(cfg, batch, args)))
        for name, run in runs:
            step_s, peak = run()
            gc.collect()
            hw.empty_cache()
            results.append(
                Result(name, tokens / step_s, step_s, flops / step_s / (args.peak_tflops * 1e12), peak)
            )
    if created_group and dist.is_initialized():
        dist.destroy_process_group()
    header = {
        "device": device_name(),
        "torch": torch.__version__,
        "commit": git_commit(),
        "model": "tiny" if args.tiny else f"Qwen2.5-{args.shape.upper()} shape, random weights",
        "timing": f"median of {args.steps} steps after {args.warmup} warm-up",
        "batch": f"{args.batch_size} x {args.prompt_len + args.response_len} ({int(tokens)} real tokens)",
        "dtype": _dtype_name(args),
        "grad ckpt": str(not args.no_gc),
        "passes": f"rlkit <= {args.micro_batch_tokens} tokens, transformers {args.baseline_micro_batch} seqs"
        + (", rlkit compiled" if args.compile else ""),
        "peak TFLOP/s": f"{args.peak_tflops:g}",
    }
    print_table(results, header)
    if args.json is not None:
        args.json.write_text(
            json.dumps({"header": header, "results": [r.__dict__ for r in results]}, indent=2)
        )
    return results


if __name__ == "__main__":
    main()
