"""Rollout throughput: rlkit's native engine vs. transformers' ``generate`` on the same weights.

A Qwen2.5-0.5B-shaped model (random weights, bf16; hidden 896, 24 layers, 14 heads, 2 kv heads,
head_dim 64, intermediate 4864, vocab 151936, tied embeddings) samples 256 new tokens (EOS ignored,
temperature 1) for random 128-token prompts in two shapes: 256 prompts x n=1, and 32 prompts x n=8
(GRPO groups: the native engine prefills each prompt once for its 8 samples). transformers runs
the same work with ``generate(do_sample=True)`` (SDPA attention, dynamic cache) in the same process.

Besides end-to-end tokens/s the table reports, for the native engine at its largest batch:

- ``decode forward`` and ``forward + sampling``: one decode forward (a CUDA-graph replay), alone
  and followed by the sampling the engine runs here, with every row at the run's mean context
  length (prompt + half the new tokens); and the whole loop step (forward, sampling and host
  bookkeeping) averaged over the n=1 run;
- ``HBM floor``: bytes a decode step must read (all weights once, plus the KV cache of every
  sequence at that mean context) divided by the device's copy bandwidth, measured with a large
  tensor copy. The distance to this floor is what kernel work could still win.

``--engines native,hf`` also runs the ``hf`` engine (rlkit's sampler over the transformers model's
forward and KV cache, the fallback for architectures the native decoder lacks) on the same model,
prompts and work, so the table compares every listed engine with ``generate`` in one run.
``vllm`` and ``server`` (where vllm is installed) load the same weights from a Hugging Face folder
written to a temporary directory; their start-up is not timed. With them, ``--tiny`` uses the
built-in tiny shape (head size 32, which vLLM's CPU attention needs) instead of the test shape
(head size 16), and prompts from the built-in tokenizer's ids.

Usage:
    python benchmarks/rollout.py            # on a GPU: the 0.5B table (about two minutes)
    python benchmarks/rollout.py --shape 7b # the Qwen2.5-7B shape
    python benchmarks/rollout.py --engines native,hf --tiny   # every engine, CPU, seconds
    python benchmarks/rollout.py --engines native,hf,vllm --tiny  # + vLLM (start-up ~1 min on CPU)
    python benchmarks/rollout.py --no-hf    # native engine only
    python benchmarks/rollout.py --tiny     # CPU smoke test (seconds)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlkit.hardware import device as hw
from rlkit.hardware.kernels import use_triton
from rlkit.models import DecoderConfig
from rlkit.models.loader import build_native
from rlkit.models.shapes import SHAPES, TINY
from rlkit.models.tiny import tiny_config
from rlkit.models.tokenizer import BUILTIN_VOCAB_SIZE
from rlkit.rollout import NativeEngine, RolloutEngine, SamplingParams
from rlkit.rollout.registry import ENGINES, build_engine, build_engine_from_path, loads_checkpoint
from rlkit.rollout.sampling import RowParams, sample_tokens


@dataclass
class Result:
    engine: str
    shape: str
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def _now() -> float:
    hw.synchronize()
    return time.perf_counter()


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (count, length), generator=g).tolist()


def bench_engine(
    engine: RolloutEngine,
    label: str,
    prompts: list[list[int]],
    n: int,
    new_tokens: int,
    repeats: int = 4,
    warmup: int = 2,
) -> tuple[Result, float]:
    """Tokens/s of a ``generate`` call (the median of ``repeats`` timed calls after ``warmup`` full
    ones, every call printed), and the loop-step time of the median call in seconds."""
    params = SamplingParams(n=n, temperature=1.0, max_tokens=new_tokens, ignore_eos=True)
    stats = getattr(engine, "stats", None)  # the vLLM engines keep no step counts
    runs = []
    for i in range(warmup + repeats):
        steps_before = stats.decode_steps if stats is not None else 0
        start = _now()
        outs = engine.generate(prompts, params)
        seconds = _now() - start
        tokens = sum(len(c.token_ids) for group in outs for c in group)
        steps = stats.decode_steps - steps_before if stats is not None else 0
        print(
            f"{label} {len(prompts)} x n={n} call {i + 1} ({'warm-up' if i < warmup else 'timed'}): {seconds:.3f} s"
        )
        if i >= warmup:
            runs.append((seconds, tokens, steps))
    seconds, tokens, steps = sorted(runs)[len(runs) // 2]
    return Result(label, f"{len(prompts)} x n={n}", tokens, seconds), seconds / max(steps, 1)


def bench_other_engines(
    args: argparse.Namespace, model: Any, prompts: list[list[int]], slots: int
) -> list[Result]:
    """The n=1 and grouped runs of every listed engine but native, on the same weights and prompts."""
    results = []
    for name in args.engines:
        if name == "native":
            continue
        max_len = args.prompt_len + args.new_tokens
        if loads_checkpoint(name):
            engine = _engine_from_folder(name, model, slots, max_len)
        else:
            engine = build_engine(name, model, max_num_seqs=slots, max_model_len=max_len)
        label = f"rlkit {name}"
        timed = {"repeats": args.repeats, "warmup": 1 if args.tiny else 2}
        results.append(bench_engine(engine, label, prompts, 1, args.new_tokens, **timed)[0])
        group = prompts[: args.group_prompts]
        results.append(bench_engine(engine, label, group, args.n, args.new_tokens, **timed)[0])
        engine.close()
        del engine
        hw.empty_cache()
    return results


def _engine_from_folder(name: str, model: Any, slots: int, max_len: int) -> RolloutEngine:
    """Engine ``name`` (vllm, server) over ``model``'s weights, saved as a Hugging Face folder first."""
    import tempfile

    from rlkit.models import build_tokenizer, write_hf_folder

    folder = Path(tempfile.mkdtemp(prefix="rlkit-bench-"))
    write_hf_folder(folder, model.config.to_hf(), dict(model.state_dict()), tokenizer=build_tokenizer())
    weight = next(model.parameters())
    return build_engine_from_path(
        name,
        str(folder),
        dtype=weight.dtype,
        max_num_seqs=slots,
        max_model_len=max_len,
        cuda_graphs=weight.device.type == "cuda",
    )


def decode_step_seconds(
    engine: NativeEngine, context: int, repeats: int = 20, rounds: int = 5
) -> tuple[float, float]:
    """Time of one decode forward, and of a forward plus sampling, at the engine's largest batch with
    every row at ``context`` tokens (the context the HBM floor is computed at): the median over
    ``rounds`` of the mean of ``repeats`` back-to-back steps, after a warm-up round.

    The forward is a graph replay on GPU; sampling is what the engine runs for temperature 1 without
    truncation (the fused kernels where Triton runs, else the PyTorch sampler).
    """
    b = engine.num_slots
    buf = engine._buf  # noqa: SLF001 - a benchmark may look inside
    assert buf is not None
    buf.positions[:b] = context - 1  # rows attend over `context` cached positions
    buf.temperature[:b] = 1.0
    if engine._graphs is not None:  # noqa: SLF001
        forward = lambda: engine._graphs.replay(b)  # noqa: E731, SLF001
    else:
        forward = lambda: engine._graph_step(b)  # noqa: E731, SLF001

    def sample() -> None:
        if use_triton(engine.device):
            from rlkit.rollout.sampling_kernel import fused_sample

            fused_sample(buf.logits[:b], buf.temperature[:b], buf.keys[:b], buf.positions[:b])
        else:
            noise = torch.empty(b, buf.logits.shape[1], device=engine.device).exponential_()
            params = RowParams(temperature=buf.temperature[:b], divide=False, any_greedy=False)
            sample_tokens(buf.logits[:b].float(), params, noise)

    times = []
    with torch.no_grad():
        for step in (forward, lambda: (forward(), sample())):
            per_round = []
            for _ in range(rounds + 1):
                start = _now()
                for _ in range(repeats):
                    step()
                per_round.append((_now() - start) / repeats)
            times.append(statistics.median(per_round[1:]))
    return times[0], times[1]


def trace_decode(engine: NativeEngine, out: Path, steps: int = 5, rows: int = 30) -> None:
    """Eager decode forwards at the largest batch under the torch profiler (kernels, not one graph launch)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if engine.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    b = engine.num_slots
    with torch.no_grad(), profile(activities=activities) as prof:
        for _ in range(steps):
            engine._graph_step(b)  # noqa: SLF001 - a benchmark may look inside
        hw.synchronize()
    out.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out) + ".json")
    sort = "self_cuda_time_total" if engine.device.type == "cuda" else "self_cpu_time_total"
    print(f"--- {out.name}: {steps} eager decode forwards at batch {b}, top {rows} by {sort}")
    print(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60))


def trace_loop(engine: NativeEngine, prompts: list[list[int]], out: Path, new_tokens: int = 32) -> None:
    """A short ``generate`` at the largest batch under the torch profiler: what a loop step does
    besides the forward (sampling kernels, copies, host bookkeeping), as a chrome trace."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if engine.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    params = SamplingParams(n=1, temperature=1.0, max_tokens=new_tokens, ignore_eos=True)
    with torch.no_grad(), profile(activities=activities) as prof:
        engine.generate(prompts[: engine.num_slots], params)
        hw.synchronize()
    out.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out) + ".json")
    sort = "self_cuda_time_total" if engine.device.type == "cuda" else "self_cpu_time_total"
    print(f"--- {out.name}: generate of {new_tokens} tokens at batch {engine.num_slots}, by {sort}")
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))


def bench_transformers(
    cfg: DecoderConfig, model: Any, prompts: list[list[int]], n: int, new_tokens: int, repeats: int = 2
) -> Result:
    """transformers' ``generate`` on the same weights: the median of ``repeats`` timed calls after a
    short warm-up call (it compiles nothing, and a call at this shape takes tens of seconds)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    weight = next(model.parameters())
    hf_cfg = AutoConfig.for_model(**cfg.to_hf())
    with torch.device(weight.device):  # initialised where it runs: a 7B init on the host takes minutes
        hf = AutoModelForCausalLM.from_config(hf_cfg, dtype=weight.dtype, attn_implementation="sdpa")
    hf.load_state_dict(model.state_dict(), strict=False)
    hf = hf.eval()
    ids = torch.tensor(prompts, device=weight.device)
    kwargs = dict(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        num_return_sequences=n,
        pad_token_id=cfg.pad_token_id,
    )
    with torch.no_grad():
        hf.generate(
            ids[:2],
            attention_mask=torch.ones_like(ids[:2]),
            **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4},
        )
        times = []
        for i in range(repeats):
            start = _now()
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
            times.append(_now() - start)
            print(f"transformers {len(prompts)} x n={n} call {i + 1} (timed): {times[-1]:.3f} s")
    seconds = statistics.median(times)
    tokens = out.shape[0] * (out.shape[1] - ids.shape[1])
    del hf
    hw.empty_cache()
    return Result("transformers", f"{len(prompts)} x n={n}", tokens, seconds)


def copy_bandwidth(device: torch.device, gib: float = 1.0) -> float:
    """Device memory bandwidth in bytes/s from a large copy (read + write counted)."""
    numel = int(gib * 2**30) // 4
    src = torch.empty(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    repeats = 10
    start = _now()
    for _ in range(repeats):
        dst.copy_(src)
    seconds = (_now() - start) / repeats
    return 2 * src.numel() * src.element_size() / seconds


def decode_floor_seconds(
    model: Any, cfg: DecoderConfig, batch: int, context: float, bandwidth: float
) -> float:
    """Bytes one decode step must read (weights once + KV of every sequence) / bandwidth."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied: counted once
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * next(model.parameters()).element_size()
    return (weight_bytes + batch * context * per_token) / bandwidth


def device_name(device: torch.device) -> str:
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return str(getattr(torch, device.type).get_device_name(device))


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def print_table(results: list[Result], header: dict[str, str]) -> None:
    for key, value in header.items():
        print(f"{key:>18}: {value}")
    print(f"| {'engine':<14} | {'shape':<12} | {'tokens':>8} | {'seconds':>8} | {'tokens/s':>10} |")
    print(f"|{'-' * 16}|{'-' * 14}|{'-' * 10}|{'-' * 10}|{'-' * 12}|")
    for r in results:
        print(
            f"| {r.engine:<14} | {r.shape:<12} | {r.tokens:>8} | {r.seconds:>8.2f} | {r.tokens_per_s:>10,.0f} |"
        )
    for shape in dict.fromkeys(r.shape for r in results):
        by_engine = {r.engine: r for r in results if r.shape == shape}
        baseline = by_engine.get("transformers")
        if baseline is None:
            continue
        for name, r in by_engine.items():
            if name != "transformers":
                speedup = r.tokens_per_s / baseline.tokens_per_s
                print(f"speed-up {name.removeprefix('rlkit ')} / transformers at {shape}: {speedup:.2f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU: a smoke test")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the accelerator, else cpu)")
    parser.add_argument("--prompts", type=int, default=256, help="prompts of the n=1 run")
    parser.add_argument("--group-prompts", type=int, default=32, help="prompts of the grouped run")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt of the grouped run")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers generate baseline")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b", help="Qwen2.5 model shape")
    parser.add_argument(
        "--repeats", type=int, default=4, help="timed generate calls per rlkit engine and shape"
    )
    parser.add_argument("--baseline-repeats", type=int, default=2, help="timed transformers calls per shape")
    parser.add_argument(
        "--engines",
        default="native",
        help=f"comma-separated rollout engines to run ({', '.join(ENGINES)}); native always runs",
    )
    parser.add_argument("--no-graphs", action="store_true", help="run the native decode step eagerly")
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="profile 5 eager decode forwards: chrome trace + kernel table",
    )
    args = parser.parse_args(argv)
    args.engines = list(dict.fromkeys(["native", *(e.strip() for e in args.engines.split(",") if e.strip())]))
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {unknown}; known: {', '.join(ENGINES)}")
    if args.tiny:
        args.device = args.device or "cpu"
        args.prompts, args.group_prompts, args.n = 8, 2, 4
        args.prompt_len, args.new_tokens = 16, 16
        args.repeats, args.baseline_repeats = 1, 1
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    device = torch.device(args.device or hw.torch_device_name())
    vllm_engines = any(loads_checkpoint(e) for e in args.engines)
    cfg = (tiny_config("tiny") if vllm_engines else TINY) if args.tiny else SHAPES[args.shape]
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    model = build_native(cfg, weights=None, dtype=dtype, device=device, seed=0)
    vocab = min(cfg.vocab_size, BUILTIN_VOCAB_SIZE) if vllm_engines else cfg.vocab_size
    prompts = random_prompts(args.prompts, args.prompt_len, vocab, seed=1)
    slots = max(args.prompts, args.group_prompts * args.n)
    engine = NativeEngine(
        model,
        device=device,
        max_num_seqs=slots,
        max_model_len=args.prompt_len + args.new_tokens,
        cuda_graphs=not args.no_graphs,
    )
    results: list[Result] = []
    timed = {"repeats": args.repeats, "warmup": 1 if args.tiny else 2}
    single, loop_step = bench_engine(engine, "rlkit native", prompts, 1, args.new_tokens, **timed)
    grouped, _ = bench_engine(
        engine, "rlkit native", prompts[: args.group_prompts], args.n, args.new_tokens, **timed
    )
    results += [single, grouped]
    results += bench_other_engines(args, model, prompts, slots)
    context = args.prompt_len + args.new_tokens // 2
    forward, step = decode_step_seconds(engine, context)
    if args.trace is not None:
        trace_decode(engine, args.trace / "decode_forward")
        trace_loop(engine, prompts, args.trace / "decode_loop")
    bandwidth = copy_bandwidth(device, gib=0.25 if args.tiny else 2.0)
    floor = decode_floor_seconds(model, cfg, engine.num_slots, context, bandwidth)
    if not args.no_hf:
        reps = args.baseline_repeats
        results.insert(1, bench_transformers(cfg, model, prompts, 1, args.new_tokens, reps))
        group = prompts[: args.group_prompts]
        results.append(bench_transformers(cfg, model, group, args.n, args.new_tokens, reps))
    header = {
        "device": device_name(device),
        "torch": torch.__version__,
        "commit": git_commit(),
        "model": f"{'tiny' if args.tiny else 'Qwen2.5-' + args.shape.upper() + '-shaped'} ({dtype}, random weights, "
        f"hidden {cfg.hidden_size}, {cfg.num_layers} layers, head size {cfg.head_dim})",
        "work": f"prompts of {args.prompt_len} tokens, {args.new_tokens} new tokens, EOS ignored, T=1",
        "cuda graphs": str(engine._graphs is not None),  # noqa: SLF001
        "decode forward": f"{forward * 1e3:.2f} ms at batch {engine.num_slots}, context {context}"
        f" ({forward / floor:.1f}x the floor)",
        "forward + sampling": f"{step * 1e3:.2f} ms ({step / floor:.1f}x the floor)",
        "decode loop step": f"{loop_step * 1e3:.2f} ms (forward + sampling + host, the median n=1 call's average)",
        "timing": f"rlkit engines: median of {args.repeats} calls after warm-up; transformers: median of "
        f"{args.baseline_repeats}",
        "copy bandwidth": f"{bandwidth / 1e9:.0f} GB/s",
        "HBM floor": f"{floor * 1e3:.2f} ms per decode step (weights + KV at context {context})",
    }
    shapes = list(dict.fromkeys(r.shape for r in results))
    results.sort(key=lambda r: shapes.index(r.shape))  # stable: engines in run order within a shape
    print_table(results, header)
    return results


if __name__ == "__main__":
    main()
