"""Options shared by the commands that compose a config (train, sft, config, profile)."""

from __future__ import annotations

import typer

PROFILE = typer.Option(
    None, "--profile", "-p", help="Hardware profile (see `rlkit profiles`) or a YAML path."
)
CONFIG = typer.Option(None, "--config", "-c", help="YAML file of config keys, applied after the profile.")
OVERRIDES = typer.Argument(None, help="KEY=VALUE overrides, applied last (e.g. trainer.total_steps=7).")
