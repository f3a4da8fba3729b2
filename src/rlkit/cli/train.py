"""``rlkit train``: run an RL recipe (``--dry-run``: only the checks that need no Ray and no weights)."""

from __future__ import annotations

import typer

from rlkit.cli._checks import compose, dry_run
from rlkit.cli._options import CONFIG, NODES, OVERRIDES, PROFILE, with_nodes

EPILOG = (
    "Examples: [bold]rlkit train grpo[/] (the embedded default: tiny model, synthetic task), "
    "[bold]rlkit train ppo --profile cpu trainer.total_steps=5[/], "
    "[bold]rlkit train grpo --dry-run data.train_files=gsm8k/train.parquet[/] (checks only, ~1 s), "
    "[bold]RAY_ADDRESS=HEAD:6379 rlkit train grpo --profile h100x8 --nodes 2[/] (an existing cluster)"
)


def train(
    recipe: str = typer.Argument(..., help="Recipe name (see `rlkit recipes`) or a recipe YAML path."),
    overrides: list[str] = OVERRIDES,
    profile: str = PROFILE,
    config_file: str = CONFIG,
    nodes: int = NODES,
    dry: bool = typer.Option(
        False, "--dry-run", help="Run every check that needs no Ray and no weights, print them, and stop."
    ),
) -> None:
    """Run an RL recipe (PPO, GRPO, ...) on the Ray trainer core; the run folder is trainer.out_dir."""
    cfg = compose(
        recipe,
        profile=profile,
        config_file=config_file,
        overrides=with_nodes(overrides, nodes),
        command="train",
    )
    if dry:
        dry_run(cfg, "train")
        return
    from rlkit.trainer import run_rl

    run_dir = run_rl(cfg)
    typer.echo(f"run finished: {run_dir} (metrics.jsonl, checkpoints/); plot it with `rlkit plot {run_dir}`")
