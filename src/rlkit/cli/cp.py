"""``rlkit cp``: copy a recipe's resolved config to a YAML file you can edit and run."""

from __future__ import annotations

from pathlib import Path

import typer
from omegaconf import OmegaConf

from rlkit.config.load import load_config
from rlkit.outputs import check_new_file

EPILOG = "Example: [bold]rlkit cp grpo my_grpo.yaml[/], edit it, then [bold]rlkit train my_grpo.yaml[/]"


def cp(
    recipe: str = typer.Argument(..., help="Recipe name (see `rlkit recipes`)."),
    dest: Path = typer.Argument(..., help="YAML file to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite DEST if it exists."),
) -> None:
    """Write a recipe's full config (every key, no profile) as a standalone recipe file."""
    check_new_file(dest, force=force, flag="DEST")
    cfg = load_config(recipe)
    body = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(body, dict)
    body.pop("recipe", None)
    text = f"# Copied from the `{recipe}` recipe by `rlkit cp`; run with `rlkit train {dest}`.\n"
    text += "defaults:\n  - rlkit_schema\n  - _self_\n\n" + OmegaConf.to_yaml(OmegaConf.create(body))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(dest)
    typer.echo(f"wrote {dest}")
