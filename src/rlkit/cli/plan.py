"""``rlkit plan``: batch math, placement and memory per device and phase, without Ray or weights."""

from __future__ import annotations

import typer

from rlkit.cli._checks import compose
from rlkit.cli._options import CONFIG, NODES, OVERRIDES, PROFILE, with_nodes

EPILOG = (
    "Examples: [bold]rlkit plan grpo[/] (the embedded default), "
    "[bold]rlkit plan grpo --profile h100x8 --nodes 2 model.path=Qwen/Qwen2.5-7B-Instruct[/] "
    "(reads only config.json)"
)


def plan(
    recipe: str = typer.Argument(..., help="Recipe name (see `rlkit recipes`) or a recipe YAML path."),
    overrides: list[str] = OVERRIDES,
    profile: str = PROFILE,
    config_file: str = CONFIG,
    nodes: int = NODES,
) -> None:
    """Print what one RL step does per device: batch math, placement, estimated peak memory per phase."""
    from rlkit.config.compose import to_dataclass
    from rlkit.trainer.plan import plan as build
    from rlkit.trainer.plan import render

    cfg = compose(
        recipe,
        profile=profile,
        config_file=config_file,
        overrides=with_nodes(overrides, nodes),
        command="train",
    )
    typer.echo(render(build(to_dataclass(cfg))))
