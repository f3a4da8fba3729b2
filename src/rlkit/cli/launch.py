"""``rlkit launch slurm|skypilot|ray``: the job files of a multi-node run, printed to stdout."""

from __future__ import annotations

import typer

from rlkit.cli._checks import compose
from rlkit.cli._options import CONFIG, NODES, OVERRIDES, PROFILE, with_nodes
from rlkit.errors import UserError

EPILOG = (
    "Examples: [bold]rlkit launch slurm grpo --profile h100x8 --nodes 4 > job.sbatch[/], "
    "[bold]rlkit launch skypilot grpo --profile h100x8 --nodes 2 > task.yaml[/], "
    "[bold]rlkit launch ray grpo --profile h100x8 --nodes 2 --head-ip 10.0.0.1[/] (commands per node)"
)
TARGETS = ("slurm", "skypilot", "ray")


def launch(
    target: str = typer.Argument(
        ..., help="slurm (an sbatch script), skypilot (a task YAML) or ray (commands)."
    ),
    recipe: str = typer.Argument(..., help="Recipe name (see `rlkit recipes`) or a recipe YAML path."),
    overrides: list[str] = OVERRIDES,
    profile: str = PROFILE,
    config_file: str = CONFIG,
    nodes: int = NODES,
    port: int = typer.Option(6379, "--port", help="Port of the Ray head node."),
    accelerator: str = typer.Option(
        None, "--accelerator", help="SkyPilot accelerator name (default: from the profile, e.g. H100)."
    ),
    head_ip: str = typer.Option(
        None, "--head-ip", help="Address of the head node (ray: printed into the commands)."
    ),
    setup: str = typer.Option(
        "pip install -e .", "--setup", help="SkyPilot setup command, run in the synced folder on every node."
    ),
) -> None:
    """Print the job file of a run over several nodes, generated from the resolved config."""
    from rlkit.config.compose import to_dataclass
    from rlkit.trainer import launch_files as lf

    if target not in TARGETS:
        raise UserError(f"rlkit launch: unknown target {target!r}", hint=f"use one of {', '.join(TARGETS)}")
    overrides = with_nodes(overrides, nodes)
    cfg = to_dataclass(compose(recipe, profile=profile, config_file=config_file, overrides=overrides))
    command = ["rlkit", "train", recipe]
    command += ["--profile", profile] if profile else []
    command += ["--config", config_file] if config_file else []
    command += [
        *(o for o in overrides if not o.startswith("hardware.nodes=")),
        "--nodes",
        str(cfg.hardware.nodes),
    ]
    spec = lf.LaunchSpec.from_config(cfg, command, port=port)
    if target == "slurm":
        text = lf.slurm(spec)
    elif target == "skypilot":
        text = lf.skypilot(spec, profile, accelerator, setup)
    else:
        text = lf.ray_by_hand(spec, head_ip)
    typer.echo(text, nl=False)
