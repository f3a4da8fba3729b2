"""End-to-end GRPO step time: rlkit's trainer core vs TRL's GRPOTrainer on the same model and batch.

A Qwen2.5-0.5B-shaped model (``--shape 1.5b`` for the 1.5B shape) with random weights (so no
download), 32 prompts of about 128 tokens x 8 samples x 256 new tokens per step, one GPU. Random
weights almost never emit EOS, so responses run to the full 256 tokens on both sides. Both systems
run ``--steps`` steps (default 6) and discard the first ``--warmup`` (default 2: compilation,
autotuning, allocator growth); every step of both is printed, and the tables report the median of
the steady steps (at least four): seconds per step, tokens/s per GPU, the time per stage and the
peak device memory of the update (rlkit), with TRL measured in the same process when ``--vs trl``
is given.

    python benchmarks/e2e.py --vs trl          # on a GPU machine
    python benchmarks/e2e.py --tiny            # CPU smoke test (tiny model, 2 steps)
    python benchmarks/e2e.py --mode sync one_step_off async --placement split   # 2 GPUs: trainer.mode

``--mode`` runs rlkit once per ``trainer.mode`` given (the first is the same-run baseline) and prints
one row each with the mean staleness of the trained tokens; ``--placement split`` puts the rollout
engine on a device of its own (``hardware.rollout_devices=1``; two devices unless ``--set`` or the
profile says otherwise), which is what lets the off-policy modes overlap generation with the update.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rlkit.models import DecoderConfig
from rlkit.models.shapes import SHAPES, TINY


def commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def make_model(folder: Path, shape: DecoderConfig) -> None:
    """A random-weight model folder with rlkit's byte-level tokenizer."""
    from rlkit.models import build_tokenizer, save_hf
    from rlkit.models.decoder import CausalLM
    from rlkit.models.loader import init_weights

    tokenizer = build_tokenizer()
    cfg = dataclasses.replace(shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = CausalLM(cfg)
    init_weights(model, seed=0)
    save_hf(model.to(torch.bfloat16), folder, tokenizer=tokenizer)


def make_prompts(path: Path, n: int, prompt_chars: int) -> list[str]:
    """Verl-schema parquet of n prompts, each about ``prompt_chars`` bytes (= tokens, byte tokenizer)."""
    texts = [(f"Question {i}: " + "compute the sum of these numbers " * 20)[:prompt_chars] for i in range(n)]
    rows = {
        "data_source": ["arith"] * n,
        "prompt": [[{"role": "user", "content": t}] for t in texts],
        "ability": ["arith"] * n,
        "reward_model": [{"style": "rule", "ground_truth": "0"} for _ in range(n)],
        "extra_info": [{"split": "train", "index": i} for i in range(n)],
    }
    pq.write_table(pa.table(rows), path)
    return texts


def run_rlkit(model: Path, data: Path, out: Path, args: argparse.Namespace, mode: str) -> dict[str, float]:
    from rlkit.config.load import load_config
    from rlkit.trainer import run_rl

    overrides = [
        f"model.path={model}",
        f"data.train_files=[{data}]",
        f"data.batch_size={args.prompts}",
        f"actor.mini_batch_size={args.prompts}",
        f"rollout.n={args.n}",
        f"data.max_prompt_length={args.prompt_tokens + 64}",
        f"data.max_response_length={args.response_tokens}",
        f"trainer.total_steps={args.steps}",
        "trainer.val_every=0",
        "trainer.loggers=[jsonl]",
        f"trainer.out_dir={out}",
        "trainer.resume=never",
        "actor.lr=1e-6",
        f"trainer.mode={mode}",
        f"trainer.max_staleness={args.max_staleness}",
    ]
    if args.tiny:
        overrides.append("hardware.device=cpu")
    overrides += placement_overrides(args)
    overrides += args.set
    run_rl(load_config("grpo", profile=args.profile, overrides=overrides))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if r["step"] > args.warmup] or rows
    keys = {k for r in steady for k in r if k.startswith(("timing/", "throughput/")) and k != "timing/save_s"}
    keys |= {k for r in steady for k in r if k in ("async/staleness_mean", "memory/update_peak_gib")}
    for r in rows:
        tag = "steady" if r in steady and len(steady) < len(rows) else "warm-up"
        stages = ", ".join(
            f"{k[len('timing/') : -len('_s')]} {r[k]:.3f}"
            for k in ("timing/gen_s", "timing/old_log_prob_s", "timing/update_actor_s", "timing/sync_s")
            if k in r
        )
        print(
            f"rlkit {mode} step {r['step']} ({tag}): {r.get('timing/step_s', 0):.2f} s ({stages}), "
            f"reward {r.get('reward/mean')}"
        )
    return {k: statistics.median(r[k] for r in steady if k in r) for k in sorted(keys)}


def placement_overrides(args: argparse.Namespace) -> list[str]:
    """``hardware.*`` of ``--placement``: split gives the rollout engine one device of its own."""
    if args.placement == "colocated":
        return []
    given = " ".join(args.set)
    devices = [] if args.profile or "hardware.devices_per_node=" in given else ["hardware.devices_per_node=2"]
    return ["hardware.placement=split", "hardware.rollout_devices=1", *devices]


def recorded_checkpointing(run_dir: Path) -> bool:
    """The gradient checkpointing an rlkit run used (its config.yaml records a profile's null resolved)."""
    from omegaconf import OmegaConf

    return bool(OmegaConf.load(run_dir / "config.yaml").model.gradient_checkpointing)


def run_trl(model: Path, texts: list[str], args: argparse.Namespace) -> float:
    """Median seconds per steady step of TRL's GRPOTrainer with transformers generation (every step
    printed; the first ``args.warmup`` discarded, as for rlkit)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_step_end(self, *a: object, **k: object) -> None:
            torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())

    wanted = dict(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.prompts * args.n, num_generations=args.n,
        max_completion_length=args.response_tokens, max_prompt_length=args.prompt_tokens + 64, learning_rate=1e-6,
        bf16=True, logging_steps=1, max_steps=args.steps, report_to=[], use_vllm=False, save_strategy="no",
        gradient_checkpointing=True, beta=0.0,
    )  # fmt: skip
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    config = GRPOConfig(**{k: v for k, v in wanted.items() if k in fields})
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(
            model, torch_dtype=torch.bfloat16, attn_implementation="sdpa"
        ),
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=config,
        train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": t}]} for t in texts]),
        processing_class=AutoTokenizer.from_pretrained(model),
        callbacks=[timer],
    )
    start = time.perf_counter()
    trainer.train()
    stamps = [start, *timer.stamps]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    for i, gap in enumerate(gaps, 1):
        print(f"TRL step {i} ({'warm-up' if i <= args.warmup else 'steady'}): {gap:.2f} s")
    return statistics.median(gaps[args.warmup :] or gaps)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--vs", choices=["trl"], default=None, help="also run TRL's GRPOTrainer in this process"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke test)")
    parser.add_argument("--steps", type=int, default=6, help="steps per system, warm-up included")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b", help="Qwen2.5 model shape")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--response-tokens", type=int, default=256)
    parser.add_argument("--profile", default=None, help="rlkit hardware profile, e.g. h100x2")
    parser.add_argument(
        "--mode", nargs="+", default=["sync"], choices=["sync", "one_step_off", "async"],
        help="trainer.mode values to run, one rlkit run each (the first is the baseline)",
    )  # fmt: skip
    parser.add_argument("--placement", choices=["colocated", "split"], default="colocated")
    parser.add_argument("--max-staleness", type=int, default=1, help="trainer.max_staleness of --mode async")
    parser.add_argument("--commit", default=None, help="commit to print (the GPU machine has no .git)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra rlkit override (repeatable)"
    )
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.warmup, args.prompts, args.n, args.prompt_tokens, args.response_tokens = (
            2,
            1,
            4,
            2,
            32,
            8,
        )
    elif args.steps - args.warmup < 4:
        parser.error(
            f"--steps {args.steps} leaves {args.steps - args.warmup} steady steps: the median needs >= 4"
        )
    return args


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlkit-e2e-"))
    make_model(work / "model", TINY if args.tiny else SHAPES[args.shape])
    texts = make_prompts(work / "train.parquet", args.prompts * max(args.steps, 1), args.prompt_tokens)
    runs = {
        m: run_rlkit(work / "model", work / "train.parquet", work / f"run-{m}", args, m) for m in args.mode
    }
    rlkit = runs[args.mode[0]]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"\n## e2e GRPO step: {device}, torch {torch.__version__}, commit {args.commit or commit()}")
    print(
        f"{'tiny' if args.tiny else 'Qwen2.5-' + args.shape.upper()}-shaped, {args.prompts} prompts x {args.n} "
        f"samples, ~{args.prompt_tokens} prompt + {args.response_tokens} new tokens; medians of steps "
        f"{args.warmup + 1}-{args.steps}"
    )
    print("\n| system | s/step | tokens/s per GPU |\n|---|---|---|")
    tokens = args.prompts * args.n * (args.prompt_tokens + args.response_tokens)
    step = rlkit["timing/step_s"]
    if args.profile:
        print(f"rlkit profile: {args.profile}")
    if args.set:
        print(f"rlkit overrides: {' '.join(args.set)}")
    print(f"| rlkit | {step:.2f} | {rlkit['throughput/tokens_per_s_per_device']:,.0f} |")
    if "memory/update_peak_gib" in rlkit:
        print(f"rlkit peak device memory of the update: {rlkit['memory/update_peak_gib']:.1f} GiB")
    if len(args.mode) > 1 or args.mode != ["sync"] or args.placement != "colocated":
        print(f"\n| trainer.mode ({args.placement}) | s/step | tokens/s | staleness | vs {args.mode[0]} |")
        print("|---|---|---|---|---|")
        for mode, got in runs.items():
            s = got["timing/step_s"]
            lag = got.get("async/staleness_mean", 0.0)
            print(
                f"| {mode} | {s:.2f} | {got['throughput/tokens_per_s']:,.0f} | {lag:.2f} | {step / s:.2f}x |"
            )
    print(f"rlkit model.gradient_checkpointing: {recorded_checkpointing(work / f'run-{args.mode[0]}')}")
    if args.vs == "trl":
        # TRL keeps its gradient checkpointing: without it, its update at 256 x 384 tokens ran out of
        # an H200's memory (transformers' full-vocabulary logits; docs/performance.md, round 5)
        trl_step = run_trl(work / "model", texts, args)
        print(f"| TRL GRPOTrainer | {trl_step:.2f} | {tokens / trl_step:,.0f} |")
        print(f"\nrlkit speed-up over TRL: {trl_step / step:.2f}x")
    print("\n| rlkit stage | s |\n|---|---|")
    for key, value in rlkit.items():
        if key.startswith("timing/") and key != "timing/step_s":
            print(f"| {key[7:-2]} | {value:.3f} |")


if __name__ == "__main__":
    main()
