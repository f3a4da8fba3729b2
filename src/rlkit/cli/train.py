"""``rlkit train``: run an RL recipe."""

from __future__ import annotations

import typer

from rlkit.cli._options import CONFIG, OVERRIDES, PROFILE
from rlkit.config.load import load_config

EPILOG = (
    "Examples: [bold]rlkit train grpo[/] (the embedded default: tiny model, synthetic task), "
    "[bold]rlkit train ppo --profile cpu trainer.total_steps=5[/]"
)


def train(
    recipe: str = typer.Argument(..., help="Recipe name (see `rlkit recipes`) or a recipe YAML path."),
    overrides: list[str] = OVERRIDES,
    profile: str = PROFILE,
    config_file: str = CONFIG,
) -> None:
    """Run an RL recipe (PPO, GRPO, ...) on the Ray trainer core; the run folder is trainer.out_dir."""
    cfg = load_config(
        recipe, profile=profile, config_file=config_file, overrides=overrides or [], command="train"
    )
    from rlkit.trainer import run_rl

    run_dir = run_rl(cfg)
    typer.echo(f"run finished: {run_dir} (metrics.jsonl, checkpoints/); plot it with `rlkit plot {run_dir}`")
