"""Host-side work of a GRPO step that runs on the CPU between GPU kernels, at the e2e benchmark's shape.

Two pieces sit on the step's critical path in a profile of `benchmarks/e2e.py`: building the RL
batch from the engine's completions (the end of ``rollout.generate``) and packing the update's
micro-batches (the start of ``actor.update``). Both are timed here on synthetic data of the e2e
shape (32 prompts x 8 samples, prompts of 64-128 real tokens left-padded to 192, 256-token
responses), the median of ``--repeats`` calls after one warm-up call, at each thread count given.

    python benchmarks/host_work.py
    PYTHONPATH=/path/to/other/tree/src python benchmarks/host_work.py   # the same shapes, other code
"""

from __future__ import annotations

import argparse

import torch
from _timing import median_seconds

from rlkit.data.batch import Batch
from rlkit.rollout.base import Completion
from rlkit.trainer.rollout_batch import completions_to_batch
from rlkit.training.passes import packed_micro_batches

PROMPTS, SAMPLES, PROMPT_WIDTH, RESPONSE = 32, 8, 192, 256
MICRO_BATCH_TOKENS = 32768


def _prompts(gen: torch.Generator) -> Batch:
    ids = torch.randint(0, 150_000, (PROMPTS, PROMPT_WIDTH), generator=gen)
    mask = torch.zeros(PROMPTS, PROMPT_WIDTH, dtype=torch.long)
    for i in range(PROMPTS):
        mask[i, PROMPT_WIDTH - 64 - 2 * i :] = 1
    return Batch(tensors={"prompts": ids * mask, "prompt_attention_mask": mask})


def _completions(gen: torch.Generator) -> list[list[Completion]]:
    out = []
    for _ in range(PROMPTS):
        group = []
        for _ in range(SAMPLES):
            tokens = torch.randint(0, 150_000, (RESPONSE,), generator=gen).tolist()
            logprobs = (-torch.rand(RESPONSE, generator=gen)).tolist()
            group.append(Completion(tokens, logprobs, logprobs, "length"))
        out.append(group)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    prompts, completions = _prompts(gen), _completions(gen)
    batch = completions_to_batch(prompts, completions, pad_id=0, max_response_length=RESPONSE)
    cpu = torch.device("cpu")
    print(
        f"torch {torch.__version__}; {PROMPTS} x {SAMPLES} rows, prompts {PROMPT_WIDTH} wide, {RESPONSE} new tokens"
    )
    print("| threads | completions_to_batch ms | packed_micro_batches ms |")
    print("|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        build = 1e3 * median_seconds(
            lambda: completions_to_batch(prompts, completions, pad_id=0, max_response_length=RESPONSE),
            args.repeats,
        )
        pack = 1e3 * median_seconds(
            lambda: packed_micro_batches(batch, MICRO_BATCH_TOKENS, cpu), args.repeats
        )
        print(f"| {threads} | {build:.2f} | {pack:.2f} |")


if __name__ == "__main__":
    main()
