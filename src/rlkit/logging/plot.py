"""PNG curves of a run's metrics (``rlkit plot RUN_DIR``)."""

from __future__ import annotations

import math
from pathlib import Path

from rlkit.errors import UserError
from rlkit.logging.metrics import read_metrics

DEFAULT_METRICS = (
    "reward/mean",
    "val/reward/mean",
    "response_length/mean",
    "actor/pg_loss",
    "actor/entropy",
    "actor/grad_norm",
    "actor/ppo_kl",
    "critic/vf_loss",
    "sft/loss",
    "val/loss",
    "rollout/logprob_gap_abs",
    "timing/step_s",
    "throughput/tokens_per_s",
)


def plot_run(run_dir: Path, out: Path | None = None, metrics: list[str] | None = None) -> Path:
    """Write a grid of metric curves (one panel per metric present) and return the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not (run_dir / "metrics.jsonl").is_file() and (run_dir / "latest").exists():
        raise UserError(
            f"{run_dir} holds runs, not metrics",
            hint=f"pass one of them, e.g. rlkit plot {run_dir / 'latest'}",
        )
    rows = read_metrics(run_dir / "metrics.jsonl")
    wanted = metrics or list(DEFAULT_METRICS)
    present = [m for m in wanted if any(isinstance(r.get(m), (int, float)) for r in rows)]
    if not present:
        missing = ", ".join(wanted[:4])
        raise UserError(f"{run_dir / 'metrics.jsonl'} has none of the metrics to plot ({missing}, ...)")
    cols = min(3, len(present))
    nrows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.2 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, present, strict=False):
        points = [(r["step"], r[name]) for r in rows if isinstance(r.get(name), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = out or run_dir / "metrics.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
