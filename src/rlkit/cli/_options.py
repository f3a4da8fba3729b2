"""Options shared by the commands that compose a config (train, sft, config, plan, launch, profile)."""

from __future__ import annotations

import typer

PROFILE = typer.Option(
    None, "--profile", "-p", help="Hardware profile (see `rlkit profiles`) or a YAML path."
)
CONFIG = typer.Option(None, "--config", "-c", help="YAML file of config keys, applied after the profile.")
OVERRIDES = typer.Argument(None, help="KEY=VALUE overrides, applied last (e.g. trainer.total_steps=7).")
NODES = typer.Option(
    None,
    "--nodes",
    min=1,
    help="Nodes of an existing Ray cluster to spread the workers over (sets hardware.nodes; the "
    "cluster is hardware.ray_address or $RAY_ADDRESS).",
)


def with_nodes(overrides: list[str] | None, nodes: int | None) -> list[str]:
    """``overrides`` plus ``hardware.nodes=N`` when ``--nodes N`` was given (it wins: applied last)."""
    return [*(overrides or []), *([f"hardware.nodes={nodes}"] if nodes is not None else [])]
