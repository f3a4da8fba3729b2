"""The on-disk layout of rlkit checkpoints: names, the manifest, atomic writes and verification.

A run's checkpoints live in ``RUN/checkpoints/``::

    latest                      "step_N": the newest complete checkpoint (written last, atomically)
    step_N/
      manifest.json             format, version, step, roles, every other file with its size and CRC-32
                                (written last)
      trainer_state.json        step, sampler, KL controller, driver RNG, world size, roles (SFT: ``trainer``)
      config.yaml               the resolved config of the run
      tokenizer/                the tokenizer (save_pretrained), so merge needs nothing else
      <role>/config.json        the Hugging Face config.json of the role's model
      <role>/state.json         optimizer param groups, LR schedule, counters, LoRA settings
      <role>/dcp/               model + optimizer tensors, sharded, written by every rank with DCP
      rng/rank_<r>.json         torch CPU / device / numpy / python RNG states of worker ``r``
      ...                       anything else the trainer's ``write_roles`` writes (SFT: ``hf/``, ``adapter/``),
                                listed in the manifest and checked like the rest
    step_N.tmp/                 a save in progress (or killed): never a checkpoint

A save writes everything into ``step_N.tmp/``, the manifest last, then renames the folder to
``step_N`` and rewrites ``latest``; a process killed at any point leaves the older checkpoints
untouched and at most a ``.tmp`` folder behind. A ``step_N`` folder whose manifest is missing or
does not match the files is *damaged*, never silently skipped.

The manifest's ``checksums`` hold a CRC-32 of every file (1 MiB chunks, ~3 GB/s on one CPU core:
a few seconds for a 0.5B model with its optimizer, small next to writing it). Listing
(``rlkit ckpt ls``) checks sizes only; resuming and merging (:func:`verify_checkpoint`) read every
byte. Checkpoints of older rlkit versions have no ``checksums``: they are read with sizes checked
only, and the console says so once per checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from rlkit.errors import UserError

# Checkpoint remarks (resume, pruning, archiving) go to stderr, one line each.
console = Console(stderr=True, soft_wrap=True, highlight=False)

FORMAT = "rlkit-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.yaml"
TOKENIZER_DIR = "tokenizer"
ROLE_STATE = "state.json"
ROLE_HF_CONFIG = "config.json"
DCP_DIR = "dcp"
RNG_DIR = "rng"
LATEST = "latest"
TMP_SUFFIX = ".tmp"
_STEP_RE = re.compile(r"^step_(\d+)$")
_TMP_RE = re.compile(r"^step_(\d+)\.tmp$")
CHECKSUM = "crc32"
_CHUNK = 1 << 20


def checkpoints_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step_{step}"


def step_of(path: str | os.PathLike[str]) -> int | None:
    """The step of a ``step_N`` folder name, or None for any other name."""
    match = _STEP_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_checkpoint_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like an rlkit checkpoint folder (it has a manifest or a trainer state)."""
    p = Path(path)
    return p.is_dir() and ((p / MANIFEST).is_file() or (p / TRAINER_STATE).is_file())


# ---------------------------------------------------------------------------------- atomic files


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling, fsync and rename: never half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file of a checkpoint; a missing or malformed one is a UserError naming it."""
    if not path.is_file():
        raise UserError(f"checkpoint file {path} is missing", hint="the checkpoint is damaged or incomplete")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"checkpoint file {path} is not valid JSON ({exc})", hint="the file is damaged"
        ) from exc


# ---------------------------------------------------------------------------------- the manifest


def required_files(roles: list[str]) -> list[str]:
    """Files every checkpoint with these trained roles must list in its manifest."""
    files = [TRAINER_STATE, CONFIG]
    for role in roles:
        files += [f"{role}/{ROLE_STATE}", f"{role}/{ROLE_HF_CONFIG}", f"{role}/{DCP_DIR}/.metadata"]
    return files


def file_checksum(path: Path) -> str:
    """CRC-32 of a file's bytes (read in 1 MiB chunks), as 8 hex digits."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def write_manifest(folder: Path, *, step: int, roles: list[str], world_size: int) -> dict[str, Any]:
    """List every file under ``folder`` with its size and checksum and write ``manifest.json`` (the last file)."""
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST]
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in paths}
    checksums = {p.relative_to(folder).as_posix(): file_checksum(p) for p in paths}
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": step,
        "roles": roles,
        "world_size": world_size,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
        "checksum": CHECKSUM,
        "checksums": checksums,
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def _read_manifest(folder: Path) -> tuple[str | None, dict[str, Any] | None]:
    """``(problem, manifest)`` of a folder's manifest file: it exists, parses and is one this rlkit reads."""
    path = folder / MANIFEST
    if not path.is_file():
        return f"{path} is missing (the save did not finish, or the folder was copied partially)", None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"{path} is not valid JSON ({exc})", None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"{path} is not an rlkit checkpoint manifest", None
    version = manifest.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        return (
            f"{path} has format version {version!r}; this rlkit reads up to {FORMAT_VERSION} (upgrade rlkit)",
            None,
        )
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("roles"), list):
        return f"{path} lacks its file list or roles", None
    return None, manifest


def manifest_problem(folder: Path, *, checksums: bool = False) -> tuple[str | None, dict[str, Any] | None]:
    """``(problem, manifest)``: what is wrong with a checkpoint folder (None when it is complete).

    Checks that the manifest exists and parses, that its format version is one this rlkit reads,
    and that every listed file exists with exactly the listed size (a truncated shard is caught
    here, before anything is loaded); with ``checksums``, also every file's CRC-32 (a changed byte
    is caught; checkpoints without checksums pass on their sizes).
    """
    problem, manifest = _read_manifest(folder)
    if problem is not None or manifest is None:
        return problem, None
    path = folder / MANIFEST
    files: dict[str, Any] = manifest["files"]
    for name in required_files(manifest["roles"]):
        if name not in files:
            return f"{folder / name} is not in the manifest {path}", None
    for name, size in files.items():
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            return f"{path} names a file outside the checkpoint: {name!r}", None
        file = folder / rel
        if not file.is_file():
            return f"{file} is missing", None
        actual = file.stat().st_size
        if actual != size:
            return f"{file} has {actual} bytes but the manifest says {size} (truncated or changed)", None
    sums = manifest.get("checksums")
    if checksums and isinstance(sums, dict):
        for name in files:
            expected = sums.get(name)
            if expected is not None and file_checksum(folder / name) != expected:
                return f"{folder / name} does not match its checksum in {path} (its bytes changed)", None
    return None, manifest


def has_checksums(manifest: dict[str, Any]) -> bool:
    """Whether a manifest carries per-file checksums (checkpoints of older rlkit versions do not)."""
    return isinstance(manifest.get("checksums"), dict)


def verify_checkpoint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a complete checkpoint folder, every file's size and checksum verified.

    Raises:
        UserError: The folder is not a checkpoint, or it is damaged (the message names the file).
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"no such checkpoint folder {str(path)!r}", hint="pass RUN/checkpoints/step_N")
    if not is_checkpoint_dir(path):
        hint = "pass RUN/checkpoints/step_N"
        newest = newest_complete(path) or newest_complete(checkpoints_dir(path))
        if newest is not None:
            hint = f"pass a step folder, e.g. {newest.path}"
        raise UserError(f"{str(path)!r} is not an rlkit checkpoint folder (no {MANIFEST})", hint=hint)
    problem, manifest = manifest_problem(path, checksums=True)
    if problem is not None:
        raise UserError(f"checkpoint {path} is damaged: {problem}", hint=_older_hint(path))
    assert manifest is not None
    if not has_checksums(manifest):
        console.print(
            f"[yellow]checkpoint {path} has no checksums (written by an older rlkit): "
            "only file sizes were checked[/]"
        )
    return manifest


def _older_hint(folder: Path) -> str:
    step = step_of(folder)
    older = [c for c in list_checkpoints(folder.parent) if c.complete and step is not None and c.step < step]
    if older:
        path = older[-1].path
        return f"use the older one: resume with trainer.resume={path}, or `rlkit ckpt merge {path} --out DIR`"
    return "no older complete checkpoint; start over with trainer.resume=never"


# ---------------------------------------------------------------------------------- listing


@dataclass
class CheckpointInfo:
    """One entry of a run's ``checkpoints/`` folder, as ``rlkit ckpt ls`` shows it."""

    step: int
    path: Path
    status: str  # "complete", "damaged" or "interrupted" (a step_N.tmp folder)
    problem: str | None = None
    size_bytes: int = 0
    created: float = 0.0
    roles: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def inspect(folder: Path) -> CheckpointInfo:
    """Status, size, time and roles of one ``step_N`` or ``step_N.tmp`` folder (checks sizes, not bytes)."""
    tmp = _TMP_RE.match(folder.name)
    step = int(tmp.group(1)) if tmp else step_of(folder)
    assert step is not None, folder
    size = _folder_size(folder)
    if tmp:
        return CheckpointInfo(
            step, folder, "interrupted", "a save that did not finish", size, folder.stat().st_mtime
        )
    problem, manifest = manifest_problem(folder)
    if problem is not None or manifest is None:
        return CheckpointInfo(step, folder, "damaged", problem, size, folder.stat().st_mtime)
    return CheckpointInfo(
        step, folder, "complete", None, size, (folder / MANIFEST).stat().st_mtime, list(manifest["roles"])
    )


def list_checkpoints(ckpt_dir: str | os.PathLike[str], *, include_tmp: bool = False) -> list[CheckpointInfo]:
    """Every ``step_N`` folder of a ``checkpoints/`` folder, oldest first (``.tmp`` ones on request)."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        if child.is_dir() and (_STEP_RE.match(child.name) or (include_tmp and _TMP_RE.match(child.name))):
            out.append(inspect(child))
    return sorted(out, key=lambda c: (c.step, c.status == "interrupted"))


def newest_complete(ckpt_dir: str | os.PathLike[str]) -> CheckpointInfo | None:
    complete = [c for c in list_checkpoints(ckpt_dir) if c.complete]
    return complete[-1] if complete else None


def read_latest(ckpt_dir: str | os.PathLike[str]) -> str | None:
    """The folder name the ``latest`` pointer names, if there is one."""
    path = Path(ckpt_dir) / LATEST
    if not path.is_file():
        return None
    return path.read_text().strip() or None
