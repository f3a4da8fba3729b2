"""Driver-side saving: one atomic checkpoint folder per save, the ``latest`` pointer, ``keep_last`` pruning.

The driver writes what it owns (trainer state, config, tokenizer), asks the workers to write
theirs (``write_roles``: sharded role state with DCP, per-rank RNG), then writes the manifest,
renames ``step_N.tmp`` to ``step_N`` and only then updates ``latest`` and removes checkpoints
beyond ``keep_last``. See :mod:`rlkit.ckpt.layout` for the folder layout.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlkit.ckpt.layout import (
    CONFIG,
    LATEST,
    TMP_SUFFIX,
    TOKENIZER_DIR,
    TRAINER_STATE,
    checkpoints_dir,
    console,
    fsync_dir,
    list_checkpoints,
    step_name,
    write_json,
    write_manifest,
    write_text_atomic,
)


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    trainer_state: dict[str, Any],
    config: dict[str, Any],
    tokenizer: Any,
    roles: list[str],
    world_size: int,
    write_roles: Callable[[Path], None],
    keep_last: int = 0,
) -> Path:
    """Write ``RUN/checkpoints/step_<step>/`` atomically and return it.

    Args:
        run_dir: The run directory (``trainer.out_dir``).
        step: The trainer step just finished.
        trainer_state: Driver state as JSON-able data (sampler, KL controller, driver RNG, ...);
            ``step``, ``roles`` and ``world_size`` are added.
        config: The resolved run config (written as ``config.yaml``).
        tokenizer: Saved with ``save_pretrained`` into ``tokenizer/``.
        roles: The trained roles whose state ``write_roles`` writes (``actor``, ``critic``).
        world_size: Ranks of the worker group.
        write_roles: Called with the temporary folder; writes every role's state and the workers'
            RNG states into it (a collective call on the workers) and returns when all are on disk.
        keep_last: Keep only the newest N complete checkpoints (0 keeps all).
    """
    # absolute: the workers that write into it may run in another directory (or on another node)
    root = checkpoints_dir(Path(run_dir).resolve())
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = root / (step_name(step) + TMP_SUFFIX)
    if tmp.exists():  # left by a save of this step that was killed
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_text_atomic(tmp / CONFIG, OmegaConf.to_yaml(OmegaConf.create(config)))
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        state = {
            **trainer_state,
            "step": step,
            "roles": list(roles),
            "world_size": world_size,
            "keep_last": keep_last,  # a resume without trainer.keep_last keeps this run's setting
        }
        write_json(tmp / TRAINER_STATE, state)
        write_roles(tmp)
        write_manifest(tmp, step=step, roles=list(roles), world_size=world_size)
        fsync_dir(tmp)
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / LATEST, final.name + "\n")
    prune(root, keep_last)
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is replaced only once the new one is in place."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prune(root: Path, keep_last: int) -> list[Path]:
    """Remove complete checkpoints older than the newest ``keep_last`` (0 keeps all), saying so.

    Damaged folders are left for the user to look at (``rlkit ckpt ls`` shows them); folders of
    interrupted saves (``step_N.tmp``) are removed.

    Returns:
        The folders removed.
    """
    infos = list_checkpoints(root, include_tmp=True)
    interrupted = [c.path for c in infos if c.status == "interrupted"]
    complete = [c for c in infos if c.complete]
    old = [c.path for c in complete[:-keep_last]] if keep_last > 0 else []
    for path in interrupted + old:
        shutil.rmtree(path, ignore_errors=True)
    if interrupted:
        names = ", ".join(p.name for p in interrupted)
        console.print(f"[dim]checkpoints: removed {names} (left by saves that did not finish)[/]")
    if old:
        names = ", ".join(p.name for p in old)
        console.print(f"[dim]checkpoints: removed {names} (trainer.keep_last={keep_last})[/]")
    return interrupted + old
