"""Step time of the embedded default (`rlkit train grpo`) on CPU, for several variants in one run.

Each variant is `rlkit train grpo` with its own overrides for ``--steps`` steps, in its own process
pinned to its own ``--cores`` CPU cores (``os.sched_setaffinity``), so variants run side by side
without sharing cores and the first variant is the same-run baseline of the others. The table
gives, per variant, the median over steps after the first ``--skip`` of each timed stage
(``timing/*_s`` in metrics.jsonl), the run's wall time, and the reward and validation reached.

The CI machine has 2 cores: ``--cores 2`` reproduces it on a larger machine (set the same
``OMP_NUM_THREADS`` policy as a user would: by default none, so rlkit picks the thread count).

Usage:
    python benchmarks/embedded_default.py --steps 40
    python benchmarks/embedded_default.py --steps 400 --variants 'base=' 'bypass=actor.old_log_probs=rollout'
    python benchmarks/embedded_default.py --variants 'one_thread=env:OMP_NUM_THREADS=1' 'auto='
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("step", "gen", "old_log_prob", "adv", "update_actor", "sync")


def _parse_variant(text: str) -> tuple[str, list[str]]:
    """``name=key=value key=value`` -> (name, overrides); ``name=`` is the recipe as shipped."""
    name, _, rest = text.partition("=")
    return name, rest.split()


def _start(
    name: str, overrides: list[str], cores: list[int], steps: int, root: Path
) -> subprocess.Popen[bytes]:
    out = root / name
    keys = [o for o in overrides if not o.startswith("env:")]
    extra = dict(o[len("env:") :].split("=", 1) for o in overrides if o.startswith("env:"))
    cmd = [
        sys.executable,
        "-m",
        "rlkit",
        "train",
        "grpo",
        f"trainer.out_dir={out}",
        f"trainer.total_steps={steps}",
        *keys,
    ]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", **extra)
    log = open(root / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)

    def pin() -> None:
        os.sched_setaffinity(0, cores)

    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=pin)


def _summary(out: Path, skip: int) -> dict[str, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r.get("step", 0) > skip and "timing/step_s" in r]
    res = {s: statistics.median(r.get(f"timing/{s}_s", 0.0) for r in timed) for s in STAGES}
    rewards = [r["reward/mean"] for r in rows if "reward/mean" in r]
    fifth = max(1, len(rewards) // 5)
    res["reward_first"] = sum(rewards[:fifth]) / fifth
    res["reward_last"] = sum(rewards[-fifth:]) / fifth
    vals = [r["val/reward/mean"] for r in rows if "val/reward/mean" in r]
    res["val_last"] = vals[-1] if vals else float("nan")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=5, help="first steps left out of the medians")
    parser.add_argument("--cores", type=int, default=2, help="cores per variant")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["base=", "bypass=actor.old_log_probs=rollout"],
        help="NAME=OVERRIDES (space-separated config overrides, env:KEY=VALUE for an environment"
        " variable; empty = the recipe as shipped)",
    )
    args = parser.parse_args()
    available = sorted(os.sched_getaffinity(0))
    variants = [_parse_variant(v) for v in args.variants]
    if len(variants) * args.cores > len(available):
        raise SystemExit(
            f"{len(variants)} variants x {args.cores} cores need more than the {len(available)} here"
        )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"# embedded default, {args.steps} steps, {args.cores} cores per variant | {platform.processor() or platform.machine()}"
        f" | {len(available)} cores | commit {commit or '?'} | {time.strftime('%Y-%m-%d')}"
    )
    with tempfile.TemporaryDirectory(prefix="rlkit-embedded-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        procs = []
        for i, (name, overrides) in enumerate(variants):
            cores = available[i * args.cores : (i + 1) * args.cores]
            procs.append(
                (name, overrides, _start(name, overrides, cores, args.steps, root), time.perf_counter())
            )
        head = (
            f"{'variant':<12} {'wall s':>7} "
            + " ".join(f"{s:>12}" for s in STAGES)
            + "  reward first->last  val"
        )
        ended: dict[str, float] = {}
        while len(ended) < len(procs):
            for name, _, proc, _ in procs:
                if name not in ended and proc.poll() is not None:
                    ended[name] = time.perf_counter()
            time.sleep(0.2)
        rows = []
        for name, overrides, proc, t0 in procs:
            wall = ended[name] - t0
            if proc.returncode != 0:
                tail = (root / f"{name}.log").read_text(errors="replace")[-2000:]
                rows.append(f"{name:<12} failed (exit {proc.returncode}):\n{tail}")
                continue
            s = _summary(root / name, args.skip)
            rows.append(
                f"{name:<12} {wall:7.1f} "
                + " ".join(f"{s[k]:12.3f}" for k in STAGES)
                + f"  {s['reward_first']:.3f} -> {s['reward_last']:.3f}  {s['val_last']:.3f}"
                + (f"   [{' '.join(overrides)}]" if overrides else "")
            )
        print(head)
        print("\n".join(rows))
        print(f"# all variants done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
