"""Driver-side resume: which checkpoint a run continues from, and what happens to the run folder.

``trainer.resume``:

- ``auto``: the newest checkpoint of ``trainer.out_dir`` by step. It must be complete: a damaged
  newest checkpoint stops the run with an error naming the file and the ``trainer.resume=PATH``
  of the newest intact older one; rlkit never falls back silently. No checkpoint: a fresh start.
  ``step_N.tmp`` folders (saves that did not finish) are not checkpoints and are removed.
- ``never``: a fresh start.
- a ``step_N`` folder: continue from it (it may belong to another run).

Nothing already written is deleted: what the new run would overwrite or mix with (on a fresh
start every checkpoint and ``metrics.jsonl``; on resume the checkpoints newer than the resumed
step) is moved to ``RUN/archive/<time>/``, and the console says so.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlkit.ckpt.layout import (
    CONFIG,
    LATEST,
    ROLE_HF_CONFIG,
    TRAINER_STATE,
    checkpoints_dir,
    list_checkpoints,
    read_json,
    verify_checkpoint,
    write_text_atomic,
)
from rlkit.ckpt.save import console
from rlkit.errors import UserError
from rlkit.models import DecoderConfig, native_unsupported_reason

METRICS_FILE = "metrics.jsonl"
ARCHIVE_DIR = "archive"
# The model-shape keys of config.json that must agree between a checkpoint and the run resuming it.
ARCH_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
)
# The command that writes each trainer kind's checkpoints (``trainer_state.json``'s ``trainer``).
_COMMANDS = {"rl": "rlkit train", "sft": "rlkit sft"}
# Config keys that may change between a checkpoint and its resumed run without a note.
_QUIET_KEYS = (
    "trainer.total_steps",
    "trainer.resume",
    "trainer.out_dir",
    "trainer.save_every",
    "trainer.keep_last",
    "trainer.loggers",
    "trainer.val_every",
    "trainer.val_before_train",
    "sft.val_every",
    "trainer.project",
    "trainer.experiment",
    "hardware.",
)


@dataclass
class ResumePoint:
    """A verified checkpoint to continue from."""

    path: Path
    step: int
    manifest: dict[str, Any]
    state: dict[str, Any]  # trainer_state.json
    config: dict[str, Any]  # config.yaml

    @property
    def roles(self) -> list[str]:
        return list(self.manifest["roles"])

    def role_hf_config(self, role: str) -> dict[str, Any]:
        """The ``config.json`` of a trained role's model."""
        config: dict[str, Any] = read_json(self.path / role / ROLE_HF_CONFIG)
        return config


def read_resume_point(path: str | os.PathLike[str]) -> ResumePoint:
    """Verify a checkpoint folder and read its driver state and config.

    Raises:
        UserError: Not a checkpoint folder, or a damaged one (naming the file).
    """
    folder = Path(path).expanduser().resolve()
    manifest = verify_checkpoint(folder)
    state = read_json(folder / TRAINER_STATE)
    try:
        config = OmegaConf.to_container(OmegaConf.load(folder / CONFIG))
    except Exception as exc:  # yaml and OmegaConf raise several types
        raise UserError(f"checkpoint file {folder / CONFIG} is not valid YAML ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(state, dict) or "step" not in state:
        raise UserError(f"checkpoint {folder} has a malformed {TRAINER_STATE} or {CONFIG}")
    return ResumePoint(folder, int(state["step"]), manifest, state, {str(k): v for k, v in config.items()})


def resolve_resume(resume: str, run_dir: str | os.PathLike[str]) -> ResumePoint | None:
    """The checkpoint ``trainer.resume`` selects for ``run_dir``, or None for a fresh start.

    Raises:
        UserError: ``auto`` found a damaged newest checkpoint, or PATH is not a complete checkpoint.
    """
    if resume == "never":
        return None
    if resume != "auto":
        return read_resume_point(resume)
    infos = list_checkpoints(checkpoints_dir(run_dir))
    if not infos:
        return None
    newest = infos[-1]
    if not newest.complete:
        older = [c for c in infos if c.complete]
        hint = (
            f"to continue from the newest intact one, pass trainer.resume={older[-1].path}"
            if older
            else "no intact checkpoint is left; pass trainer.resume=never to start over"
        )
        raise UserError(f"the newest checkpoint {newest.path} is damaged: {newest.problem}", hint=hint)
    return read_resume_point(newest.path)


# ---------------------------------------------------------------------------------- the run folder


def _archive(run_dir: Path, items: list[Path], why: str) -> Path | None:
    """Move ``items`` into a fresh ``RUN/archive/<time>/`` folder (same file system: renames only)."""
    items = [p for p in items if p.exists()]
    if not items:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = run_dir / ARCHIVE_DIR / stamp
    n = 1
    while dest.exists():
        n += 1
        dest = run_dir / ARCHIVE_DIR / f"{stamp}-{n}"
    dest.mkdir(parents=True)
    for item in items:
        rel = item.relative_to(run_dir)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(item, dest / rel)
    names = ", ".join(str(p.relative_to(run_dir)) for p in items)
    console.print(f"[yellow]{why}: moved {names} to {dest} (nothing deleted)[/]")
    return dest


def _copy_metrics_rows(source: Path, dest: Path, last_step: int) -> None:
    """Start ``dest`` with the rows of ``source`` up to ``last_step`` (a run forked from another)."""
    if not source.is_file():
        return
    keep = []
    for line in source.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
        if isinstance(row, dict) and row.get("step", 0) <= last_step:
            keep.append(line)
    write_text_atomic(dest, "".join(line + "\n" for line in keep))


def prepare_run_dir(run_dir: str | os.PathLike[str], point: ResumePoint | None) -> None:
    """Make ``run_dir`` ready for a run starting fresh (``point`` None) or from ``point``.

    Removes folders of saves that did not finish, archives what the new run would overwrite or
    mix with, and points ``latest`` at the checkpoint the run continues from.
    """
    run = Path(run_dir).resolve()
    root = checkpoints_dir(run)
    run.mkdir(parents=True, exist_ok=True)
    infos = list_checkpoints(root, include_tmp=True)
    for info in [c for c in infos if c.status == "interrupted"]:
        shutil.rmtree(info.path, ignore_errors=True)
        console.print(f"[dim]checkpoints: removed {info.path.name} (a save that did not finish)[/]")
    kept = [c for c in infos if c.status != "interrupted"]
    metrics = run / METRICS_FILE
    if point is None:
        _archive(
            run, [*(c.path for c in kept), root / LATEST, metrics], "starting a fresh run in a used folder"
        )
        return
    if point.path.parent == root:
        newer = [c.path for c in kept if c.step > point.step]
        moved = _archive(run, newer, f"resuming from step {point.step}: checkpoints of later steps")
        if moved is not None and metrics.is_file():
            # the resumed run drops the rows after its step; the archive keeps the whole history
            shutil.copy2(metrics, moved / METRICS_FILE)
        write_text_atomic(root / LATEST, point.path.name + "\n")
    else:
        why = f"resuming from {point.path} into another run folder"
        _archive(run, [*(c.path for c in kept), root / LATEST, metrics], why)
        _copy_metrics_rows(point.path.parent.parent / METRICS_FILE, metrics, point.step)
    console.print(f"[green]resuming from {point.path} (step {point.step})[/]")


# ---------------------------------------------------------------------------------- compatibility


def check_compatible(
    point: ResumePoint,
    *,
    roles: list[str],
    hf_configs: dict[str, dict[str, Any]],
    config: dict[str, Any],
    trainer: str = "rl",
) -> None:
    """Refuse a checkpoint this run cannot continue; note settings that changed.

    Args:
        point: The checkpoint.
        roles: The roles this run trains (``actor``, and ``critic`` when it has one).
        hf_configs: Per role, the ``config.json`` of the model this run would build.
        config: This run's resolved config (compared with the checkpoint's, for the note).
        trainer: Which trainer resumes (``rl`` or ``sft``); it must be the one that wrote the
            checkpoint (``trainer_state.json``'s ``trainer``; RL checkpoints have none).

    Raises:
        UserError: Another trainer's checkpoint, other trained roles, or another model shape
            (naming the checkpoint file).
    """
    _check_trainer(point, trainer)
    if sorted(point.roles) != sorted(roles):
        raise UserError(
            f"checkpoint {point.path} trained {'+'.join(point.roles)} but this run trains {'+'.join(roles)}",
            hint="resume with the same algorithm settings (algo.advantage, critic.enable)",
        )
    for role in roles:
        saved = _arch(point.role_hf_config(role))
        current = _arch(hf_configs[role])
        for key in [k for k in ARCH_KEYS if k in saved and k in current]:
            if saved[key] != current[key]:
                raise UserError(
                    f"checkpoint file {point.path / role / ROLE_HF_CONFIG}: {key}={saved[key]!r}, but this "
                    f"run's {role} model has {key}={current[key]!r}",
                    hint="resume with the model.path the checkpoint was trained from",
                )
    changed = config_changes(point.config, config)
    if changed:
        console.print(f"[yellow]resuming with changed settings: {'; '.join(changed[:8])}[/]")


def _check_trainer(point: ResumePoint, trainer: str) -> None:
    """Refuse an SFT checkpoint in an RL run and the reverse: their driver states differ."""
    saved = str(point.state.get("trainer", "rl"))
    if saved == trainer:
        return
    weights = point.path / "hf"
    source = (
        f"model.path={weights}"
        if weights.is_dir()
        else f"`rlkit ckpt merge {point.path} --out DIR` and model.path=DIR"
    )
    raise UserError(
        f"checkpoint {point.path} was written by `{_COMMANDS.get(saved, saved)}`, which "
        f"`{_COMMANDS.get(trainer, trainer)}` cannot continue",
        hint=f"to start from its weights, use {source} (with another trainer.out_dir or trainer.resume=never)",
    )


def _arch(hf: dict[str, Any]) -> dict[str, Any]:
    """The shape-defining keys of a ``config.json``, normalised the way the native decoder reads them."""
    if native_unsupported_reason(hf) is None:
        c = DecoderConfig.from_hf(hf)
        return {
            "model_type": c.architecture,
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_kv_heads,
            "head_dim": c.head_dim,
            "tie_word_embeddings": c.tie_word_embeddings,
        }
    return {k: hf[k] for k in ARCH_KEYS if hf.get(k) is not None}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for config keys that differ, except run-length and logging keys."""
    a, b = _flat(before), _flat(after)
    keys = sorted(set(a) | set(b))
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in keys
        if a.get(k) != b.get(k) and not k.startswith(_QUIET_KEYS)
    ]


def note(text: str) -> None:
    """A one-line remark about checkpoints on the console (stderr)."""
    console.print(f"[yellow]{text}[/]")


def world_size_note(point: ResumePoint, world_size: int) -> None:
    """Say what happens to per-rank RNG states when the worker count changed."""
    saved = int(point.state.get("world_size", world_size))
    if saved != world_size:
        console.print(
            f"[yellow]the checkpoint was written by {saved} workers, this run has {world_size}: model and "
            f"optimizer shards are resharded; ranks 0..{min(saved, world_size) - 1} restore their RNG states"
            + (", the others keep their seeded ones" if world_size > saved else "")
            + "[/]"
        )


def select_resume(
    resume: str,
    run_dir: Path,
    *,
    hf_configs: dict[str, dict[str, Any]],
    config: dict[str, Any],
    total_steps: int,
    trainer: str = "rl",
) -> ResumePoint | None:
    """The checkpoint ``trainer.resume`` selects, checked against this run before any worker starts.

    :func:`resolve_resume`, then :func:`check_compatible` with the roles of ``hf_configs``, then a
    note when the checkpoint is already at ``total_steps`` (the run has nothing left to train).

    Raises:
        UserError: What :func:`resolve_resume` and :func:`check_compatible` refuse.
    """
    point = resolve_resume(resume, run_dir)
    if point is None:
        return None
    check_compatible(point, roles=list(hf_configs), hf_configs=hf_configs, config=config, trainer=trainer)
    if point.step >= total_steps:
        note(
            f"the checkpoint is at step {point.step} >= trainer.total_steps={total_steps}: "
            "nothing left to train (raise trainer.total_steps to continue)"
        )
    return point
