"""Rebuild ``builtin:tiny-arith``, the packaged warm start of the embedded RL default (or its teacher).

    python scripts/build_tiny_arith.py [--name NAME] [--seed 1] [--out-dir DIR] [--step K] [--install]
        [--bf16] [KEY=VALUE ...]

``--name tiny-arith-teacher model.path=builtin:tiny-teacher`` builds the teacher of ``rlkit train
distill`` instead: the larger ``builtin:tiny-teacher`` architecture (8 layers, 2.4x the student's
parameters) trained from scratch by the same SFT recipe, in two runs of this script over one folder
(the 800 steps of recipes/sft.yaml, then ``trainer.resume=auto trainer.total_steps=1200 --bf16
--install``: the deeper model learns the carries later, and was still improving at step 800); the
exact commands are in its ``build.json`` (docs/distill.md).

It runs the embedded SFT default (``rlkit sft``: ``builtin:tiny`` trained from scratch on the synthetic
arith task as chat pairs, recipes/sft.yaml) with the given seed and overrides, measures the accuracy of
the final export (or of step ``K``'s, with ``trainer.save_every`` set) on the held-out problems (greedy,
and sampled at temperature 1 with 8 samples per prompt, which is what the GRPO default sees), and with
``--install`` copies it to ``src/rlkit/models/assets/NAME/`` together with ``build.json``
(command, steps, seed, data, parameter count, accuracies). The shipped ``builtin:tiny-arith`` is
``--step 450 trainer.save_every=25 trainer.keep_last=0``: mid-way through the run, when it knows the
format and part of the arithmetic (the full 800 steps reach ~97%, leaving RL nothing to show). About
3 minutes on a 2-core CPU.

The held-out problems are the test split of ``arith.generate_splits(4096, 512, seed)``, which this SFT run
never trains on; with ``--seed 1`` they are also the validation prompts of the RL default.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from rlkit.config.load import load_config
from rlkit.data.chat import prompt_token_ids, use_chat_template
from rlkit.data_prep import arith
from rlkit.models import load_causal_lm, load_tokenizer
from rlkit.rewards.scorers.arith import compute_score
from rlkit.rollout.base import SamplingParams
from rlkit.rollout.native import NativeEngine
from rlkit.trainer.sft import run_sft

ASSETS = Path(__file__).resolve().parents[1] / "src" / "rlkit" / "models" / "assets"


def accuracy(model_path: str, rows: list[dict[str, Any]], *, temperature: float, n: int) -> float:
    """Mean arith score of ``n`` samples per row (temperature 0 = greedy)."""
    tokenizer = load_tokenizer(model_path)
    engine = NativeEngine(
        load_causal_lm(model_path), device="cpu", max_num_seqs=128, cuda_graphs=False, tokenizer=tokenizer
    )
    chat = use_chat_template(tokenizer, None)
    prompts = prompt_token_ids(tokenizer, [row["prompt"] for row in rows], chat_template=chat)
    outputs = engine.generate(prompts, SamplingParams(temperature=temperature, n=n, max_tokens=16, seed=0))
    scores = [
        compute_score(
            tokenizer.decode(c.token_ids, skip_special_tokens=True), row["reward_model"]["ground_truth"]
        )["score"]
        for out, row in zip(outputs, rows, strict=True)
        for c in out
    ]
    return sum(scores) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="tiny-arith", help="the built-in model to build (assets/NAME)")
    parser.add_argument("--seed", type=int, default=1, help="trainer.seed of the SFT run")
    parser.add_argument("--out-dir", default="/tmp/tiny-arith-sft", help="the SFT run folder")
    parser.add_argument("--install", action="store_true", help=f"copy the export to {ASSETS}/NAME")
    parser.add_argument("--bf16", action="store_true", help="install the weights in bf16 (half the size)")
    parser.add_argument(
        "--step", type=int, default=None, help="ship the checkpoint of this step (needs trainer.save_every)"
    )
    parser.add_argument("overrides", nargs="*", help="more KEY=VALUE overrides of the SFT run")
    args = parser.parse_args()

    overrides = [
        f"trainer.seed={args.seed}",
        f"trainer.out_dir={args.out_dir}",
        "trainer.resume=never",
        *args.overrides,
    ]
    cfg = load_config("sft", overrides=overrides, command="sft")
    result = run_sft(cfg)
    hf_dir = (
        result.hf_dir if args.step is None else result.run_dir / "checkpoints" / f"step_{args.step}" / "hf"
    )
    shipped = hf_dir
    if args.install:
        shipped = ASSETS / args.name
        shutil.rmtree(shipped, ignore_errors=True)
        shutil.copytree(hf_dir, shipped)
        if args.bf16:
            _to_bf16(shipped)
    held_out = arith.generate_splits(4096, 512, args.seed)["test"]
    report = {
        "build": "python scripts/build_tiny_arith.py " + " ".join(sys.argv[1:]),
        "command": "rlkit sft " + " ".join(overrides),
        "name": args.name,
        "model": cfg.model.path,
        "parameters": sum(p.numel() for p in load_causal_lm(str(shipped)).parameters()),
        "shipped": str(hf_dir.relative_to(result.run_dir)) + (" in bf16" if args.bf16 else ""),
        "steps": args.step or cfg.trainer.total_steps,
        "seed": args.seed,
        "data": f"arith.generate_splits({cfg.data.synthetic_size}, {cfg.data.synthetic_size // 8}, seed="
        f"{args.seed}): the training split as chat pairs, batch {cfg.data.batch_size}",
        # measured on the weights as shipped (bf16 when --bf16 --install)
        "val_greedy_accuracy": accuracy(str(shipped), held_out, temperature=0.0, n=1),
        "val_sampled_accuracy_t1": accuracy(str(shipped), held_out, temperature=1.0, n=8),
    }
    print(json.dumps(report, indent=2))
    if args.install:
        (shipped / "build.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"installed {shipped}")


def _to_bf16(folder: Path) -> None:
    """Rewrite every safetensors file of ``folder`` in bf16 and record the dtype in config.json."""
    import torch
    from safetensors.torch import load_file, save_file

    for file in folder.glob("*.safetensors"):
        tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(file)).items()}
        save_file(tensors, str(file), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["torch_dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()
