"""``rlkit download REPO_ID``: fetch a model (or, with --dataset, a dataset) from the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from rlkit.data.hub import default_download_dir
from rlkit.data.hub import download as download_repo
from rlkit.outputs import check_output_dir

EPILOG = (
    "Example: [bold]rlkit download Qwen/Qwen2.5-0.5B-Instruct[/] (to models/Qwen2.5-0.5B-Instruct), "
    "[bold]rlkit download openai/gsm8k --dataset[/]"
)


def download(
    repo_id: str = typer.Argument(..., help="Hub repository id, owner/name."),
    out: Path = typer.Option(None, "--out", "-o", help="Target folder (default models/NAME or data/NAME)."),
    revision: str = typer.Option(None, "--revision", "-r", help="Branch, tag or commit (default: main)."),
    dataset: bool = typer.Option(False, "--dataset", help="The repository is a dataset, not a model."),
    force: bool = typer.Option(
        False, "--force", help="Download into a non-empty folder that is not an earlier download."
    ),
) -> None:
    """Download a Hub repository (resumable; HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are honoured)."""
    target = out if out is not None else default_download_dir(repo_id, dataset)
    if not (target / ".cache" / "huggingface").is_dir():  # an earlier download resumes in place
        check_output_dir(target, force=force)
    result = download_repo(repo_id, out=target, revision=revision, dataset=dataset)
    size_mb = result.num_bytes / 2**20
    Console().print(
        f"downloaded {escape(repo_id)} to [bold]{escape(str(result.out))}[/] "
        f"({result.num_files} files, {size_mb:,.1f} MiB)"
    )
    if dataset:
        Console().print(f"[dim]prepare it with `rlkit data NAME --source {escape(str(result.out))}`[/]")
    else:
        Console().print(f"[dim]use it with model.path={escape(str(result.out))}[/]")
