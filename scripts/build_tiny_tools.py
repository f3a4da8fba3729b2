"""Rebuild ``builtin:tiny-tools``, the packaged warm start of the tool-use RL recipe.

    python scripts/build_tiny_tools.py [--seed 1] [--tool-fraction 0.4] [--out-dir DIR] [--step K]
                                       [--measure-only HF_DIR] [--install] [KEY=VALUE ...]

It writes SFT conversations of the ``arith_tools`` task (``rlkit.data_prep.arith_tools``: a
``--tool-fraction`` share of traces that call the calculator and copy its result, the rest answer
from the model's head, mostly wrongly) to ``OUT/data/*.jsonl``, runs ``rlkit sft`` on them
(recipes/sft.yaml, starting from ``builtin:tiny-arith``, with the overrides below), then measures
the export (or step ``K``'s, with ``trainer.save_every`` set) on held-out problems through the
native engine with a minimal tool loop (generate, run any ``<tool_call>`` with the calculator,
append the ``<tool_response>``, generate the final answer): the tool-call rate, the accuracy when
the tool is called, and the overall accuracy, greedy and sampled at temperature 1 (8 samples
per prompt, what GRPO sees). ``--install`` copies it to ``src/rlkit/models/assets/tiny-tools/``
with ``build.json`` (command, step, measurements).

The shipped model took two runs of this script (``build.json`` records both): 400 steps from
``builtin:tiny-arith``, then ``--init`` that run's step-400 export ``--steps 250 actor.lr=1.5e-3
actor.grad_clip=5.0 actor.micro_batch_tokens=4096`` (a model path that is not built-in gets the
recipe's real-model values otherwise), shipping its step 250.

The held-out problems are the test split of ``arith_tools.generate_splits(4096, 512, seed)``; the
SFT run trains on the train split only.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from rlkit.agents.tools.calculator import CalculatorTool
from rlkit.config.load import load_config
from rlkit.data.chat import prompt_token_ids, use_chat_template
from rlkit.data_prep import arith_tools
from rlkit.models import load_causal_lm, load_tokenizer
from rlkit.rewards.scorers.arith_tools import compute_score
from rlkit.rollout.base import SamplingParams
from rlkit.rollout.native import NativeEngine
from rlkit.trainer.sft import run_sft

ASSET = Path(__file__).resolve().parents[1] / "src" / "rlkit" / "models" / "assets" / "tiny-tools"
SFT_OVERRIDES = ["sft.max_length=256", "actor.warmup_steps=10"]


def _call_tool(text: str) -> str | None:
    """The calculator's reply to the first ``<tool_call>`` in ``text`` (None when there is none)."""
    import asyncio

    start = text.find("<tool_call>")
    end = text.find("</tool_call>", start)
    if start < 0 or end < 0:
        return None
    try:
        call = json.loads(text[start + len("<tool_call>") : end])
        result = asyncio.run(CalculatorTool().execute("build", dict(call.get("arguments") or {})))
    except (ValueError, AttributeError, TypeError):
        return "error: malformed tool call"
    return result.error or result.text


def measure(model_path: str, rows: list[dict[str, Any]], *, temperature: float, n: int) -> dict[str, float]:
    """Tool-call rate, accuracy when calling, and accuracy of ``n`` two-turn samples per row."""
    tokenizer = load_tokenizer(model_path)
    engine = NativeEngine(
        load_causal_lm(model_path), device="cpu", max_num_seqs=128, cuda_graphs=False, tokenizer=tokenizer
    )
    chats = [[{"role": "system", "content": arith_tools.TOOLS_PREAMBLE}, *row["prompt"]] for row in rows]
    prompts = prompt_token_ids(tokenizer, chats, chat_template=use_chat_template(tokenizer, None))
    first = engine.generate(prompts, SamplingParams(temperature=temperature, n=n, max_tokens=96, seed=0))
    records = []  # (row, first turn text, tool reply or None)
    follow_ups, follow_rows = [], []
    for prompt, outs, row in zip(prompts, first, rows, strict=True):
        for out in outs:
            text = tokenizer.decode(out.token_ids, skip_special_tokens=False)
            reply = _call_tool(text)
            records.append([row, text, reply])
            if reply is not None:
                tail = tokenizer.apply_chat_template(
                    [{"role": "tool", "content": reply}], add_generation_prompt=True, tokenize=False
                )
                ids = (
                    list(prompt)
                    + list(out.token_ids)
                    + tokenizer.encode("\n" + tail, add_special_tokens=False)
                )
                follow_ups.append(ids)
                follow_rows.append(len(records) - 1)
    if follow_ups:
        second = engine.generate(
            follow_ups, SamplingParams(temperature=temperature, n=1, max_tokens=16, seed=1)
        )
        for index, outs in zip(follow_rows, second, strict=True):
            records[index][1] += "</tool_response>" + tokenizer.decode(
                outs[0].token_ids, skip_special_tokens=False
            )
    scores = [compute_score(text, row["reward_model"]["ground_truth"])["score"] for row, text, _ in records]
    called = [reply is not None for _, _, reply in records]
    with_tool = [s for s, c in zip(scores, called, strict=True) if c]
    return {
        "tool_call_rate": sum(called) / len(called),
        "accuracy_when_calling": sum(with_tool) / len(with_tool) if with_tool else 0.0,
        "accuracy": sum(scores) / len(scores),
    }


def write_sft_files(out_dir: Path, seed: int, tool_fraction: float) -> tuple[Path, Path]:
    """The SFT conversations of the train split, and a validation set from the test split."""
    splits = arith_tools.generate_splits(4096, 512, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / "train.jsonl", out_dir / "val.jsonl")
    for path, split, part_seed in zip(paths, ("train", "test"), (seed, seed + 1), strict=True):
        rows = arith_tools.sft_conversations(splits[split], tool_fraction, part_seed)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seed", type=int, default=1, help="trainer.seed of the SFT run and the problem stream"
    )
    parser.add_argument(
        "--tool-fraction", type=float, default=0.4, help="share of SFT traces that call the tool"
    )
    parser.add_argument("--out-dir", default="/tmp/tiny-tools-sft", help="the SFT run folder")
    parser.add_argument("--install", action="store_true", help=f"copy the export to {ASSET}")
    parser.add_argument(
        "--step", type=int, default=None, help="ship this step's checkpoint (needs trainer.save_every)"
    )
    parser.add_argument("--init", default="builtin:tiny-arith", help="model.path the SFT run starts from")
    parser.add_argument("--steps", type=int, default=400, help="trainer.total_steps of the SFT run")
    parser.add_argument("--measure-only", default=None, help="skip SFT: measure this HF folder")
    parser.add_argument("--prompts", type=int, default=128, help="held-out prompts to measure on")
    parser.add_argument("overrides", nargs="*", help="more KEY=VALUE overrides of the SFT run")
    args = parser.parse_args()

    held_out = arith_tools.generate_splits(4096, 512, args.seed)["test"][: args.prompts]
    if args.measure_only:
        hf_dir, overrides, shipped = Path(args.measure_only), [], args.measure_only
    else:
        train, val = write_sft_files(Path(args.out_dir) / "data", args.seed, args.tool_fraction)
        overrides = [
            f"model.path={args.init}",
            f"trainer.total_steps={args.steps}",
            *SFT_OVERRIDES,
            f"trainer.seed={args.seed}",
            f"trainer.out_dir={args.out_dir}",
            "trainer.resume=never",
            f"data.train_files=[{train}]",
            f"data.val_files=[{val}]",
            *args.overrides,
        ]
        result = run_sft(load_config("sft", overrides=overrides, command="sft"))
        hf_dir = (
            result.hf_dir
            if args.step is None
            else result.run_dir / "checkpoints" / f"step_{args.step}" / "hf"
        )
        shipped = str(hf_dir.relative_to(result.run_dir))
    report = {
        "command": "python scripts/build_tiny_tools.py "
        + " ".join(
            [f"--seed {args.seed}", f"--tool-fraction {args.tool_fraction}", f"--init {args.init}"]
            + [f"--steps {args.steps}", f"--out-dir {args.out_dir}"]
            + ([f"--step {args.step}"] if args.step is not None else [])
            + args.overrides
        ),
        "sft_run": "rlkit sft " + " ".join(overrides),
        "shipped": shipped,
        "seed": args.seed,
        "tool_fraction_of_sft_traces": args.tool_fraction,
        "held_out_prompts": len(held_out),
        "greedy": measure(str(hf_dir), held_out, temperature=0.0, n=1),
        "sampled_t1_n8": measure(str(hf_dir), held_out, temperature=1.0, n=8),
    }
    print(json.dumps(report, indent=2))
    if args.install:
        shutil.rmtree(ASSET, ignore_errors=True)
        shutil.copytree(hf_dir, ASSET)
        (ASSET / "build.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"installed {ASSET}")


if __name__ == "__main__":
    main()
