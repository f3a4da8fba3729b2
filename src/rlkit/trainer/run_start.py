"""The first thing every training run does, before Ray or any worker starts: open its run folder.

:func:`open_run` picks the folder (:func:`rlkit.ckpt.run_folder.resolve_run_folder`), takes its
lock (:class:`rlkit.ckpt.lock.RunLock`), finds and checks the checkpoint ``trainer.resume``
selects, settles ``trainer.keep_last``, writes the resolved folder into the config and prints it.
A run whose checkpoint is already at ``trainer.total_steps`` says so in one line and trains
nothing (:attr:`RunStart.nothing_left`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlkit import ckpt
from rlkit.ckpt.layout import console
from rlkit.ckpt.lock import RunLock
from rlkit.ckpt.resume import keep_last_for
from rlkit.ckpt.run_folder import RunFolder, discard_if_unused, resolve_run_folder
from rlkit.config.schema import RlkitConfig
from rlkit.errors import UserError


@dataclass
class RunStart:
    """An opened run folder: locked for this process until :meth:`close`."""

    folder: RunFolder
    lock: RunLock
    point: ckpt.ResumePoint | None
    config_dict: dict[str, Any] = field(default_factory=dict)
    nothing_left: bool = False

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    def close(self) -> None:
        """Release the folder; a fresh one the run wrote nothing into (it failed first) goes away."""
        self.lock.release()
        discard_if_unused(self.folder)


def resolved_config(cfg: RlkitConfig) -> dict[str, Any]:
    """The config as plain data, interpolations resolved (what ``config.yaml`` holds)."""
    resolved = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(resolved, dict)
    return {str(k): v for k, v in resolved.items()}


def open_run(
    cfg: RlkitConfig, *, trainer: str, hf_configs: Callable[[], dict[str, dict[str, Any]]]
) -> RunStart:
    """Open ``cfg``'s run folder for a run of ``trainer`` (``rl`` or ``sft``); updates ``cfg.trainer``.

    Args:
        cfg: The run's config; ``trainer.out_dir`` becomes the folder chosen and
            ``trainer.keep_last`` the value in effect.
        trainer: Which trainer runs (checkpoints resume only with the one that wrote them).
        hf_configs: Per trained role, the ``config.json`` this run would build (called only when
            there is a checkpoint to check).

    Raises:
        UserError: A folder in use or not writable, or a checkpoint this run cannot continue.
    """
    folder = resolve_run_folder(cfg.trainer.out_dir, cfg.trainer.resume, cfg.recipe)
    try:
        lock = RunLock.acquire(folder.path, command=" ".join(sys.argv[:3]))
    except BaseException:
        discard_if_unused(folder)
        raise
    try:
        cfg.trainer.out_dir = str(folder.path)
        point = ckpt.resolve_resume(folder.resume, folder.path)
        if point is not None:
            hf = hf_configs()
            ckpt.check_compatible(
                point, roles=list(hf), hf_configs=hf, config=resolved_config(cfg), trainer=trainer
            )
        nothing_left = point is not None and point.step >= cfg.trainer.total_steps
        cfg.trainer.keep_last = keep_last_for(point, cfg.trainer.keep_last, will_save=not nothing_left)
        start = RunStart(folder, lock, point, resolved_config(cfg))
        console.print(f"run folder: [bold]{folder.path}[/]" + (" (new)" if folder.fresh else ""))
        if point is not None and nothing_left:
            console.print(
                f"[yellow]{folder.path} is at step {point.step} of trainer.total_steps="
                f"{cfg.trainer.total_steps}: nothing left to train (raise trainer.total_steps to continue)[/]"
            )
            start.nothing_left = True
        return start
    except BaseException:
        lock.release()
        discard_if_unused(folder)
        raise


def restore_sampler(sampler: Any, point: ckpt.ResumePoint) -> None:
    """Continue the prompt order of ``point``; a mismatch also names the way to a new run."""
    try:
        sampler.load_state_dict(point.state["sampler"])
    except UserError as exc:
        hint = (exc.hint + "; " if exc.hint else "") + "or start a new run with trainer.resume=never"
        raise UserError(f"{exc.message} ({point.path})", hint=hint) from exc
