"""Checkpoints: atomic sharded saves, exact resume, merge to Hugging Face, verification.

Layout and format: :mod:`rlkit.ckpt.layout` (and docs/checkpoints.md). The pieces a trainer uses:

- run folders: :mod:`rlkit.ckpt.run_folder` (a fresh ``runs/<recipe>/<time>`` per run, ``latest``),
  :class:`rlkit.ckpt.lock.RunLock` (one live run per folder);
- driver: :func:`save_checkpoint` (atomic folder, ``latest``, ``keep_last``), :func:`resolve_resume`
  (``trainer.resume`` -> :class:`ResumePoint` or a fresh start), :func:`prepare_run_dir`,
  :func:`check_compatible`, :func:`capture_rng` / :func:`restore_rng` for the driver's RNG;
- workers (every rank, collective): :func:`save_role_state` / :func:`load_role_state` for a trained
  role (DCP, reshards to another world size), :func:`save_frozen_role` / :func:`load_frozen_role`
  for a reference model that changes during training, :func:`save_worker_rng` / :func:`load_worker_rng`;
- tools: :func:`merge_checkpoint` (``rlkit ckpt merge``), :func:`load_checkpoint_model`
  (``rlkit generate CKPT``), :func:`list_checkpoints` (``rlkit ckpt ls``).
"""

from __future__ import annotations

from rlkit.ckpt.layout import (
    FORMAT_VERSION,
    CheckpointInfo,
    checkpoints_dir,
    is_checkpoint_dir,
    list_checkpoints,
    newest_complete,
    verify_checkpoint,
)
from rlkit.ckpt.merge import (
    MergeResult,
    load_checkpoint_model,
    load_checkpoint_tokenizer,
    load_role_weights,
    merge_checkpoint,
)
from rlkit.ckpt.resume import (
    ResumePoint,
    check_compatible,
    note,
    prepare_run_dir,
    read_resume_point,
    resolve_resume,
    world_size_note,
)
from rlkit.ckpt.save import save_checkpoint
from rlkit.ckpt.state import (
    capture_rng,
    load_frozen_role,
    load_role_state,
    load_worker_rng,
    restore_rng,
    save_frozen_role,
    save_role_state,
    save_worker_rng,
)

__all__ = [
    "FORMAT_VERSION",
    "CheckpointInfo",
    "MergeResult",
    "ResumePoint",
    "capture_rng",
    "check_compatible",
    "checkpoints_dir",
    "is_checkpoint_dir",
    "list_checkpoints",
    "load_checkpoint_model",
    "load_checkpoint_tokenizer",
    "load_frozen_role",
    "load_role_state",
    "load_role_weights",
    "load_worker_rng",
    "merge_checkpoint",
    "newest_complete",
    "note",
    "prepare_run_dir",
    "read_resume_point",
    "resolve_resume",
    "restore_rng",
    "save_checkpoint",
    "save_frozen_role",
    "save_role_state",
    "save_worker_rng",
    "verify_checkpoint",
    "world_size_note",
]
