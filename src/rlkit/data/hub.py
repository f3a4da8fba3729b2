"""The Hugging Face Hub: ``rlkit download`` and hub ids wherever a model path is taken.

``huggingface_hub.snapshot_download`` does the work: it shows progress, resumes interrupted
downloads and reads ``HF_TOKEN`` for private and gated repositories. ``HF_ENDPOINT``,
``HF_HUB_OFFLINE`` and the cache folder (``HF_HUB_CACHE``, else ``HF_HOME/hub``) are read when the
call is made (huggingface_hub itself reads them once at import). Every failure a user can fix
becomes one :class:`UserError` line.

:func:`resolve_model_path` is the one resolver of model arguments (``model.path``,
``model.tokenizer``, ``critic.model_path``, ``rlkit generate MODEL``): a local folder is used as
is; an ``ORG/NAME`` id is looked up in the Hugging Face cache first (no network) and downloaded
into it once when missing, so later runs, and the Ray workers of this run, read it offline.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# What a model needs from a Hub repository: config, safetensors weights, tokenizer and chat
# template files. Pickle weights (*.bin, *.pt), ONNX/GGUF exports and code are never fetched.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def hub_cache_dir() -> Path:
    """The Hugging Face cache folder, from the environment as it is now."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def is_hub_id(path: str) -> bool:
    """Whether a model argument names a Hub repository (``ORG/NAME``, not an existing local path)."""
    if path.startswith(("/", ".", "~")) or os.path.exists(os.path.expanduser(path)):
        return False
    return _HUB_ID.fullmatch(path) is not None


def resolve_model_path(path: str | os.PathLike[str], *, key: str = "model.path") -> str:
    """The local folder of a model argument: itself, or a Hub id's snapshot in the Hugging Face cache.

    ``builtin:*`` names and anything that is not an ``ORG/NAME`` id are returned unchanged (the
    loaders report a missing folder). A Hub id is read from the cache without network; when it is
    not there (or only partly), it is downloaded into the cache with huggingface_hub's progress
    bars, unless ``HF_HUB_OFFLINE`` is set.

    Args:
        path: a local folder, ``builtin:NAME`` or a Hub id ``ORG/NAME``.
        key: the config key or argument the path came from, for error messages.

    Raises:
        UserError: offline and not cached, or the Hub cannot be reached, or has no such model.
    """
    path = os.fspath(path)
    if not is_hub_id(path):
        return path
    from huggingface_hub import errors, snapshot_download

    cache = hub_cache_dir()
    kwargs: dict[str, Any] = {"repo_type": "model", "cache_dir": str(cache), "allow_patterns": MODEL_FILES}
    try:
        return str(snapshot_download(path, local_files_only=True, **kwargs))
    except (errors.LocalEntryNotFoundError, errors.IncompleteSnapshotError):
        pass
    if is_offline():
        raise UserError(
            f"{key}: HF_HUB_OFFLINE is set and model {path} is not in the Hugging Face cache ({cache})",
            hint="unset HF_HUB_OFFLINE to download it once, "
            f"or `rlkit download {path}` where there is network and pass its folder",
        )
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        return str(snapshot_download(path, endpoint=endpoint, **kwargs))
    except Exception as exc:  # mapped below; anything unrecognised keeps its traceback
        if isinstance(exc, errors.RepositoryNotFoundError) and not isinstance(exc, errors.GatedRepoError):
            raise UserError(
                f"{key}: {path!r} is no local folder and no model on {endpoint or 'https://huggingface.co'}",
                hint="check the path or the id (a private model needs HF_TOKEN)",
            ) from exc
        err = _user_error(exc, path, "model", None)
        if isinstance(err, UserError):
            raise UserError(f"{key}: {err.message}", hint=err.hint) from exc
        raise


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
