"""Which folder a run writes to, and which run ``trainer.resume`` continues (docs/train.md, "Run folders").

- ``trainer.out_dir`` unset (the default): every run gets a fresh ``runs/<recipe>/<YYYYmmdd-HHMMSS>``
  and ``runs/<recipe>/latest`` points at it (a symlink; a one-line text file where symlinks fail).
  Nothing is resumed unless asked: ``trainer.resume=latest`` continues the run ``latest`` names in
  its own folder, ``trainer.resume=PATH`` continues a run folder or checkpoint (in the run folder it
  belongs to).
- ``trainer.out_dir=DIR``: the run writes to DIR; ``trainer.resume=auto`` (the default) continues
  DIR's newest checkpoint when it has one, ``latest`` requires one, ``never`` starts over (what is
  in DIR is archived, never deleted), ``PATH`` continues another checkpoint into DIR.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from rlkit.ckpt.layout import checkpoints_dir, is_checkpoint_dir, list_checkpoints
from rlkit.errors import UserError

RUNS_ROOT = Path("runs")
LATEST_RUN = "latest"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class RunFolder:
    """Where a run writes and what ``trainer.resume`` means for it there."""

    path: Path
    resume: str
    """``never``, ``auto``, ``latest`` (a checkpoint of ``path`` is required) or a checkpoint/run PATH."""
    fresh: bool = False
    """A folder created for this run (``trainer.out_dir`` unset)."""
    previous: Path | None = None
    """For a fresh folder: the run ``latest`` named before (restored if this run writes nothing)."""
    created: bool = False
    """This run created the folder (a fresh one, or a ``trainer.out_dir`` that did not exist)."""


def recipe_runs(recipe: str, root: Path = RUNS_ROOT) -> Path:
    """``runs/<recipe>``: the folder holding a recipe's runs (a recipe file's name made path-safe)."""
    name = _UNSAFE.sub("_", Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else recipe)
    return root / (name.strip("._") or "run")


def check_out_dir(path: Path) -> None:
    """Refuse a run folder that is a file, or below a file.

    Raises:
        UserError: Naming the path and the fix.
    """
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise UserError(
                f"trainer.out_dir {path}: {part} is a file, not a folder",
                hint="set trainer.out_dir to a folder (or leave it unset for runs/<recipe>/<time>)",
            )
        if part.exists():
            return


def make_dir(path: Path) -> bool:
    """``mkdir -p`` with a one-line error when the file system refuses; whether it created ``path``."""
    check_out_dir(path)
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the run folder {path}: {exc.strerror}", hint="choose a writable trainer.out_dir"
        ) from exc
    return not existed


def new_run_folder(recipe_dir: Path) -> Path:
    """Create ``recipe_dir/<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, ... when that name is taken)."""
    make_dir(recipe_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = recipe_dir / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()  # atomic: two runs started in the same second get two folders
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(
                f"cannot create the run folder {path}: {exc.strerror}",
                hint="choose a writable trainer.out_dir",
            ) from exc
        return path
    raise UserError(f"{recipe_dir} has too many runs started at {stamp}", hint="set trainer.out_dir")


def point_latest(recipe_dir: Path, run: Path) -> None:
    """Make ``recipe_dir/latest`` name ``run`` (a relative symlink, replaced atomically; else a text file)."""
    link = recipe_dir / LATEST_RUN
    tmp = recipe_dir / f".{LATEST_RUN}.tmp-{os.getpid()}"
    target = os.path.relpath(run.resolve(), recipe_dir.resolve())
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)
        return
    except OSError:
        tmp.unlink(missing_ok=True)
    if link.is_symlink() or not link.is_dir():
        tmp.write_text(target + "\n")
        os.replace(tmp, link)


def read_latest_run(recipe_dir: Path) -> Path | None:
    """The run folder ``recipe_dir/latest`` names (symlink or text file), if it exists."""
    link = recipe_dir / LATEST_RUN
    if link.is_symlink() or link.is_dir():
        path = link.resolve()
    elif link.is_file():
        path = (recipe_dir / link.read_text().strip()).resolve()
    else:
        return None
    return path if path.is_dir() else None


def _owning_run(path: Path) -> Path | None:
    """The run folder of a checkpoint ``RUN/checkpoints/step_N``, or ``path`` itself if it is a run folder."""
    if is_checkpoint_dir(path) and path.parent.name == "checkpoints":
        return path.parent.parent
    if not is_checkpoint_dir(path) and list_checkpoints(checkpoints_dir(path)):
        return path
    return None


def resolve_run_folder(out_dir: str | None, resume: str, recipe: str, root: Path = RUNS_ROOT) -> RunFolder:
    """The folder a run writes to and what ``resume`` means there (see the module docstring).

    Creates the folder (a fresh one when ``out_dir`` is unset) and, for a fresh one, points
    ``runs/<recipe>/latest`` at it.

    Raises:
        UserError: ``out_dir`` is a file, cannot be created, or ``latest`` names no earlier run.
    """
    if out_dir:
        path = Path(out_dir).expanduser()
        return RunFolder(path, resume, created=make_dir(path))
    recipe_dir = recipe_runs(recipe, root)
    if resume == "latest":
        run = read_latest_run(recipe_dir)
        if run is None:
            raise UserError(
                f"trainer.resume=latest: no earlier run of {recipe} ({recipe_dir / LATEST_RUN} does not exist)",
                hint="start one without trainer.resume, or pass trainer.resume=PATH",
            )
        return RunFolder(_relative(run), "latest")
    if resume not in ("auto", "never"):
        source = Path(resume).expanduser()
        if not source.exists():
            raise UserError(
                f"trainer.resume={resume}: no such checkpoint or run folder",
                hint="pass RUN/checkpoints/step_N, a run folder, latest, or leave it unset for a new run",
            )
        owner = _owning_run(source.resolve())
        if owner is not None:
            return RunFolder(_relative(owner), resume)
    previous = read_latest_run(recipe_dir)
    run = new_run_folder(recipe_dir)
    point_latest(recipe_dir, run)
    return RunFolder(
        run, "never" if resume == "auto" else resume, fresh=True, previous=previous, created=True
    )


def discard_if_unused(folder: RunFolder, keep: tuple[str, ...] = (".lock",)) -> bool:
    """Remove a run folder this run created that holds nothing but ``keep`` (the run failed before
    writing anything); for a fresh one, point ``latest`` back at the run it named before. A folder
    that existed before the run is never removed, nor is anything else.

    Returns:
        Whether the folder was removed.
    """
    if not folder.created or not folder.path.is_dir():
        return False
    if any(p.name not in keep for p in folder.path.iterdir()):
        return False
    for name in keep:
        (folder.path / name).unlink(missing_ok=True)
    try:
        folder.path.rmdir()
    except OSError:
        return False  # something appeared meanwhile: keep it
    if not folder.fresh:
        return True
    recipe_dir = folder.path.parent
    if folder.previous is not None and folder.previous.is_dir():
        point_latest(recipe_dir, folder.previous)
    elif read_latest_run(recipe_dir) is None:
        (recipe_dir / LATEST_RUN).unlink(missing_ok=True)
    return True


def _relative(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (shorter messages)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path
