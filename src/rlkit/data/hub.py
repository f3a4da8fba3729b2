"""``rlkit download``: fetch a model or dataset repository from the Hugging Face Hub.

``huggingface_hub.snapshot_download`` does the work: it shows progress, resumes interrupted
downloads and reads ``HF_TOKEN`` for private and gated repositories. ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE`` are read when the download starts (huggingface_hub itself reads them once at
import). Every failure a user can fix becomes one :class:`UserError` line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rlkit.data.sources import is_offline
from rlkit.errors import UserError


@dataclass
class DownloadResult:
    """Where a repository was downloaded, and what it holds."""

    repo_id: str
    out: Path
    num_files: int
    num_bytes: int


def default_download_dir(repo_id: str, dataset: bool) -> Path:
    """``models/<name>`` for a model, ``data/<name>`` for a dataset (``<name>`` = after the last ``/``)."""
    return Path("data" if dataset else "models") / repo_id.rstrip("/").split("/")[-1]


def download(
    repo_id: str, *, out: str | Path | None = None, revision: str | None = None, dataset: bool = False
) -> DownloadResult:
    """Download a Hub repository snapshot into a local folder.

    Args:
        repo_id: ``owner/name`` on the Hub (or the endpoint in ``HF_ENDPOINT``).
        out: Target folder; default :func:`default_download_dir`.
        revision: Branch, tag or commit; default the repository's default branch.
        dataset: The repository is a dataset, not a model.

    Raises:
        UserError: Offline, unreachable Hub, unknown or gated repository, unknown revision, bad id.
    """
    from huggingface_hub import snapshot_download

    target = Path(out) if out is not None else default_download_dir(repo_id, dataset)
    kind = "dataset" if dataset else "model"
    try:
        path = snapshot_download(
            repo_id,
            repo_type=kind,
            revision=revision,
            local_dir=str(target),
            endpoint=os.environ.get("HF_ENDPOINT") or None,
            local_files_only=is_offline(),
        )
    except Exception as exc:  # mapped below; anything unrecognised keeps its traceback
        raise _user_error(exc, repo_id, kind, revision) from exc
    files = [p for p in Path(path).rglob("*") if p.is_file() and ".cache" not in p.parts]
    return DownloadResult(repo_id, Path(path), len(files), sum(p.stat().st_size for p in files))


def _user_error(exc: Exception, repo_id: str, kind: str, revision: str | None) -> Exception:
    """The UserError for a huggingface_hub failure, or ``exc`` itself when it is not the user's to fix."""
    from huggingface_hub import errors

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    flag = " --dataset" if kind == "dataset" else ""
    if isinstance(exc, errors.GatedRepoError):
        return UserError(
            f"{kind} {repo_id} is gated: accept its terms on the Hub first",
            hint="then set HF_TOKEN to a token of that account",
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return UserError(
            f"{kind} {repo_id} has no revision {revision!r}", hint="pass an existing branch, tag or commit"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        other = "a model (drop --dataset)" if kind == "dataset" else "a dataset (add --dataset)"
        return UserError(
            f"{kind} {repo_id} not found on {endpoint}",
            hint=f"check the id; a private repo needs HF_TOKEN; or it may be {other}",
        )
    if isinstance(exc, errors.HFValidationError):
        return UserError(f"{repo_id!r} is not a valid repository id: {exc}", hint="use owner/name")
    if isinstance(exc, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled):
        if is_offline():
            return UserError(
                f"HF_HUB_OFFLINE is set and {kind} {repo_id} is not in the local Hugging Face cache",
                hint=f"unset HF_HUB_OFFLINE, or run `rlkit download {repo_id}{flag}` where there is network",
            )
        return UserError(
            f"cannot reach {endpoint} to download {kind} {repo_id}: {_first_line(exc)}",
            hint="check the network (or HF_ENDPOINT for a mirror)",
        )
    if isinstance(exc, errors.HfHubHTTPError):
        return UserError(f"the Hub refused the download of {kind} {repo_id}: {_first_line(exc)}")
    if isinstance(exc, ConnectionError | TimeoutError):
        return UserError(
            f"cannot reach {endpoint}: {_first_line(exc)}", hint="check the network (or HF_ENDPOINT)"
        )
    return exc


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
