"""Driver-side resume: which checkpoint a run continues from, and what happens to the run folder.

``trainer.resume`` (for the run folder :mod:`rlkit.ckpt.run_folder` chose):

- ``auto``: the newest checkpoint of the run folder by step. It must be complete: a damaged
  newest checkpoint stops the run with an error naming the file and the ``trainer.resume=PATH``
  of the newest intact older one; rlkit never falls back silently. No checkpoint: a fresh start.
  ``step_N.tmp`` folders (saves that did not finish) are not checkpoints and are removed.
- ``latest``: as ``auto``, but a folder without a checkpoint is an error.
- ``never``: a fresh start.
- a ``step_N`` folder: continue from it (it may belong to another run); a run folder: its newest
  checkpoint, as ``auto``.

A resume continues the same run: the settings the checkpoint's state depends on
(:data:`FROZEN_KEYS`) must not change, and one that does is refused naming the key, both values
and the two ways out. Everything else (learning rate, clipping, ``trainer.total_steps``, ...) may
change; the console lists what did.

Nothing already written is deleted: what the new run would overwrite or mix with (on a fresh
start every checkpoint, ``metrics.jsonl`` and ``traces/``; on resume the checkpoints and sample
traces newer than the resumed step) is moved to ``RUN/archive/<time>/``, and the console says so.
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
    console,
    is_checkpoint_dir,
    list_checkpoints,
    read_json,
    verify_checkpoint,
    write_text_atomic,
)
from rlkit.errors import UserError
from rlkit.models import DecoderConfig, native_unsupported_reason

METRICS_FILE = "metrics.jsonl"
TRACES_DIR = "traces"  # rlkit.logging.traces: one parquet file of sample rollouts per step
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
# Config keys a checkpoint's state depends on (weights, optimizer, data order, KL controller, RNG
# streams): a run resuming with another value would not continue the same run.
FROZEN_KEYS = (
    "model.path",
    "model.lora_rank",
    "model.lora_alpha",
    "model.lora_target_modules",
    "critic.model_path",
    "data.train_files",
    "data.batch_size",
    "data.shuffle",
    "trainer.seed",
)
# Only RL runs: the prompts kept, the samples per prompt, the estimator and KL controller state.
_RL_FROZEN_KEYS = (
    "data.max_prompt_length",
    "data.prompt_key",
    "rollout.n",
    "algo.advantage",
    "algo.kl_ctrl.type",
)
# Only SFT runs: which columns make a conversation.
_SFT_FROZEN_KEYS = ("sft.messages_key", "sft.prompt_key", "sft.response_key")
# The synthetic task matters only while data.train_files is empty.
_SYNTHETIC_KEYS = ("data.synthetic", "data.synthetic_size")
DEFAULT_KEEP_LAST = 3
# Config keys that may change between a checkpoint and its resumed run without a note.
_QUIET_KEYS = (
    "trainer.total_steps",
    "trainer.resume",
    "trainer.out_dir",
    "trainer.save_every",
    "trainer.keep_last",
    "trainer.loggers",
    "trainer.log_every",
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
        UserError: ``auto`` found a damaged newest checkpoint, ``latest`` found none, or PATH is
            not a complete checkpoint (nor a run folder with one).
    """
    if resume == "never":
        return None
    if resume in ("auto", "latest"):
        return _newest(Path(run_dir), required=resume == "latest")
    path = Path(resume).expanduser()
    if path.is_dir() and not is_checkpoint_dir(path) and list_checkpoints(checkpoints_dir(path)):
        return _newest(path, required=True)  # a run folder: its newest checkpoint
    return read_resume_point(path)


def _newest(run_dir: Path, *, required: bool) -> ResumePoint | None:
    """The newest checkpoint of a run folder, which must be intact (None: there is none)."""
    infos = list_checkpoints(checkpoints_dir(run_dir))
    if not infos:
        if required:
            raise UserError(
                f"trainer.resume: {run_dir} has no checkpoint to continue from",
                hint="start a new run (leave trainer.resume unset), or pass trainer.resume=PATH of a checkpoint",
            )
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


def _trace_step(path: Path) -> int:
    """The step of a ``traces/step_NNNNNN.parquet`` file (-1 for another name)."""
    digits = path.stem.removeprefix("step_")
    return int(digits) if digits.isdigit() else -1


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
    traces = run / TRACES_DIR
    if point is None:
        # the old config.yaml too, when there is an old run to go with it
        old = [*(c.path for c in kept), root / LATEST, metrics, traces]
        old += [run / CONFIG] if any(p.exists() for p in old) else []
        _archive(run, old, "starting a fresh run in a used folder")
        return
    if point.path.parent == root:
        newer = [c.path for c in kept if c.step > point.step]
        newer += [p for p in sorted(traces.glob("step_*.parquet")) if _trace_step(p) > point.step]
        moved = _archive(run, newer, f"resuming from step {point.step}: checkpoints of later steps")
        if moved is not None and metrics.is_file():
            # the resumed run drops the rows after its step; the archive keeps the whole history
            shutil.copy2(metrics, moved / METRICS_FILE)
        write_text_atomic(root / LATEST, point.path.name + "\n")
    else:
        why = f"resuming from {point.path} into another run folder"
        old = [*(c.path for c in kept), root / LATEST, metrics, traces]
        _archive(run, old + ([run / CONFIG] if any(p.exists() for p in old) else []), why)
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
        UserError: Another trainer's checkpoint, other trained roles, another model shape
            (naming the checkpoint file), or a changed :data:`FROZEN_KEYS` setting.
    """
    _check_trainer(point, trainer)
    check_frozen(point, config, trainer)
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


def frozen_keys(config: dict[str, Any], trainer: str = "rl") -> tuple[str, ...]:
    """The settings a resumed run of this kind must keep (:data:`FROZEN_KEYS` and its kind's own)."""
    keys = FROZEN_KEYS + (_SFT_FROZEN_KEYS if trainer == "sft" else _RL_FROZEN_KEYS)
    if not _flat(config).get("data.train_files"):
        keys += _SYNTHETIC_KEYS
    return keys


def _same(key: str, old: Any, new: Any) -> bool:
    """Equal settings; two spellings of the same existing local paths count as the same."""
    if old == new:
        return True
    if key in ("model.path", "critic.model_path", "data.train_files"):
        a, b = (old if isinstance(old, list) else [old]), (new if isinstance(new, list) else [new])
        if len(a) == len(b) and all(isinstance(x, str) for x in a + b):
            paths = [(Path(x).expanduser(), Path(y).expanduser()) for x, y in zip(a, b, strict=True)]
            return all(x.exists() and y.exists() and x.resolve() == y.resolve() for x, y in paths)
    return False


def check_frozen(point: ResumePoint, config: dict[str, Any], trainer: str = "rl") -> None:
    """Refuse a resume that changes a setting the checkpoint's state depends on.

    Keys the checkpoint's config lacks (older rlkit versions) are not compared.

    Raises:
        UserError: Naming the key, its value in the checkpoint and in this run, and the ways out.
    """
    before, after = _flat(point.config), _flat(config)
    for key in frozen_keys(point.config, trainer):
        if key not in before or _same(key, before[key], after.get(key)):
            continue
        old = before[key]
        raise UserError(
            f"cannot resume from {point.path}: {key} was {old!r} in that run, this run has {after.get(key)!r}",
            hint=f"to continue that run, set {key}={_override(old)}; to start a new run instead, pass "
            "trainer.resume=never or another trainer.out_dir",
        )


def _override(value: Any) -> str:
    """A value as a KEY=VALUE override spells it."""
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def keep_last_for(point: ResumePoint | None, requested: int | None, *, will_save: bool = True) -> int:
    """The ``trainer.keep_last`` a run uses: the one asked for, else the resumed run's, else 3.

    A resume that asks for another value than the run had says which checkpoints that will
    remove at the next save, so nothing written under the old setting goes without a word
    (unless ``will_save`` is False: a resume with nothing left to train saves nothing).
    """
    saved = _saved_keep_last(point) if point is not None else None
    if requested is None:
        return saved if saved is not None else DEFAULT_KEEP_LAST
    if will_save and saved is not None and requested != saved and point is not None:
        complete = [c for c in list_checkpoints(point.path.parent) if c.complete and c.step <= point.step]
        doomed = complete[: max(len(complete) + 1 - requested, 0)] if requested > 0 else []
        what = ", ".join(c.path.name for c in doomed) if doomed else "no checkpoint yet"
        note(
            f"trainer.keep_last={requested} replaces this run's {saved}: the next save removes "
            f"{what} (pass trainer.keep_last={saved} to keep them)"
        )
    return requested


def _saved_keep_last(point: ResumePoint) -> int | None:
    """The ``keep_last`` a checkpoint's run used (its state; older checkpoints: their config)."""
    value = point.state.get("keep_last", _flat(point.config).get("trainer.keep_last"))
    return int(value) if isinstance(value, int) else None


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
