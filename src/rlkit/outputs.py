"""Checks every command runs before it writes a user-named output: nothing is overwritten unasked.

- A file that exists is replaced only with ``--force``; an output that is one of the command's own
  inputs is refused even then.
- A folder that holds anything is written into only with ``--force``, and then only the files
  the command writes are replaced (:func:`install_files`): nothing else in it is touched. A
  folder that is, contains or lies inside something the command must not change (a checkpoint,
  its run folder) is refused even with ``--force``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from rlkit.errors import UserError


def _abs(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser()))


def overlaps(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b``, lies inside it, or contains it (symlinks resolved)."""
    ra, rb = a.expanduser().resolve(), b.expanduser().resolve()
    return ra == rb or rb in ra.parents or ra in rb.parents


def check_new_file(path: Path, *, force: bool, flag: str = "--out", inputs: Iterable[Path] = ()) -> Path:
    """Refuse to write ``path`` over a folder, over one of ``inputs``, or over a file without ``force``.

    Returns:
        The absolute path.
    """
    out = _abs(path)
    if out.is_dir():
        raise UserError(f"{flag} {path} is a folder", hint="pass the path of a file to write")
    for source in inputs:
        if source.exists() and out.exists() and out.resolve() == source.resolve():
            raise UserError(f"{flag} {path} is also this command's input", hint="write to another file")
    if out.exists() and not force:
        raise UserError(
            f"{flag} {path} already exists", hint="pass --force to overwrite it, or choose another file"
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    return out


def check_output_dir(
    path: Path, *, force: bool, flag: str = "--out", protected: Iterable[tuple[Path, str]] = ()
) -> Path:
    """Refuse to write into ``path`` when it is a file, overlaps a protected folder, or (without
    ``force``) holds anything.

    Args:
        path: The output folder.
        force: The user asked to write into a non-empty folder.
        flag: How the command names the option (for the message).
        protected: ``(folder, what it is)`` pairs the output must neither be, contain, nor lie in.

    Returns:
        The absolute path.
    """
    out = _abs(path)
    for folder, what in protected:
        if overlaps(out, folder):
            raise UserError(
                f"{flag} {path} is, contains or lies inside {what} {folder}",
                hint="choose a folder outside it (even --force never writes there)",
            )
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder", hint="choose a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(
            f"{flag} {path} is not empty",
            hint="choose a new or empty folder, or pass --force to replace only the files this command writes",
        )
    return out


def install_files(staging: Path, out: Path, *, stale: Iterable[str] = ()) -> list[str]:
    """Move what was written into ``staging`` to ``out`` and remove ``staging``.

    A missing or empty ``out`` is replaced by ``staging`` in one rename. Otherwise each file moves
    over the one of the same name (one rename each); files of ``out`` matching a ``stale`` pattern
    that the new output does not have (old weight shards) are removed; nothing else is touched.

    Returns:
        The names of the stale files removed.
    """
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)
        return []
    written = {p.relative_to(staging) for p in staging.rglob("*") if p.is_file()}
    for rel in sorted(written):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, out / rel)
    removed = []
    for pattern in stale:
        for old in sorted(out.glob(pattern)):
            if old.is_file() and old.relative_to(out) not in written:
                old.unlink()
                removed.append(old.name)
    shutil.rmtree(staging, ignore_errors=True)
    return removed
