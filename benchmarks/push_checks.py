"""What the weight-push checks cost on CPU: a native-engine push with and without them.

The CPU embedded default pushes the actor's weights into the native engine after every step.
This times, per push of a model of the given shape (random weights, fp32; medians of
``--rounds`` after one warm-up):

- ``copy``: the push itself without any check (each tensor ``copy_`` into the engine's model);
- ``checked``: the rollout worker's whole checked push (:func:`push_checked`): the same copy plus
  the trainer's sums of every tensor sent (``ChecksumTap``), the engine's receipt (every pushed
  tensor read back) and the read-back of a few parameters;
- ``tap``: the trainer's word sums of every tensor alone (:class:`WordSumAccumulator`).

The actor's gather (``named_full_tensors``) is left out: it costs the same with or without checks.
::

    python benchmarks/push_checks.py --shape tiny
    python benchmarks/push_checks.py --shape 0.5b --rounds 3
"""

from __future__ import annotations

import argparse

import torch
from _timing import median_seconds


def main() -> None:
    from rlkit.models import CausalLM
    from rlkit.models.shapes import QWEN25_05B, TINY
    from rlkit.rollout.native import NativeEngine
    from rlkit.rollout.weight_sync import WordSumAccumulator, push_checked

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["tiny", "0.5b"], default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cfg = {"tiny": TINY, "0.5b": QWEN25_05B}[args.shape]
    torch.manual_seed(0)
    engine = NativeEngine(CausalLM(cfg), max_num_seqs=1, kv_cache_tokens=16, cuda_graphs=False)
    pairs = [(n, p.detach()) for n, p in CausalLM(cfg).named_parameters()]
    state = engine.model.state_dict()

    def copy() -> None:
        with torch.no_grad():
            for name, tensor in pairs:
                state[name].copy_(tensor)

    def tap() -> None:
        sums = WordSumAccumulator()
        for name, tensor in pairs:
            sums.add(name, tensor)
        sums.result()

    step = iter(range(1, 10**6))
    results = {
        "copy": median_seconds(copy, args.rounds),
        "checked": median_seconds(lambda: push_checked(next(step), engine, pairs), args.rounds),
        "tap": median_seconds(tap, args.rounds),
    }
    numel = sum(t.numel() for _, t in pairs)
    print(
        f"shape {args.shape}: {len(pairs)} tensors, {numel / 1e6:.1f} M values, {torch.get_num_threads()} threads"
    )
    for name, seconds in results.items():
        print(f"  {name:8s} {seconds * 1000:9.2f} ms per push")
    print(
        f"  checks add {(results['checked'] - results['copy']) * 1000:.2f} ms "
        f"({results['checked'] / results['copy']:.2f}x the bare copy)"
    )


if __name__ == "__main__":
    main()
