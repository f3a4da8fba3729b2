"""What ``train``, ``sft`` and ``config`` share: composing with the automatic profile, and the dry run."""

from __future__ import annotations

import typer
from omegaconf import DictConfig

from rlkit.config.load import load_config


def default_profile() -> str | None:
    """``cpu`` when this machine has no GPU or NPU (the profile applied when no ``--profile`` is given)."""
    from rlkit.hardware.device import device_type

    return "cpu" if device_type() == "cpu" else None


def compose(
    recipe: str,
    *,
    profile: str | None,
    config_file: str | None,
    overrides: list[str],
    command: str | None = None,
    origins: dict[str, str] | None = None,
) -> DictConfig:
    """:func:`~rlkit.config.load.load_config` with the ``cpu`` profile when none is given and there is no GPU."""
    return load_config(
        recipe,
        profile=profile,
        config_file=config_file,
        overrides=overrides,
        command=command,
        default_profile=None if profile else default_profile(),
        origins=origins,
    )


def dry_run(cfg: DictConfig, command: str) -> None:
    """Print what the checks that need no Ray and no weights found, then ``ok`` (a UserError otherwise)."""
    from rlkit.config.compose import to_dataclass
    from rlkit.trainer.preflight import preflight

    config = to_dataclass(cfg)
    lines = [f"config: keys, types, choices, ranges, rules between keys (recipe {config.recipe})"]
    lines += preflight(config, command)  # all or nothing: a problem is the one line printed
    for line in lines:
        typer.echo(f"checked {line}")
    typer.echo("ok (nothing was started: no Ray, no weights loaded)")
