"""Rollout record and replay (``trainer.replay=record|replay``, ``trainer.replay_dir``).

``record`` saves what the rollout engine returned for each generation round of each step (the batch
of prompts x samples, before scoring) to ``DIR/step_NNNNNN_round_R.safetensors`` (tensor columns)
plus ``.json`` (the other columns and batch metadata; never a pickle). ``replay`` loads those batches
instead of generating: scoring, advantages and the update run as in the recorded run, so a loss or a
reward function can be debugged without re-sampling, and a replayed step's loss equals the recorded
one exactly when nothing else changed.

``DIR/recording.json`` keeps the config values that decide what was generated (:data:`MATCH_KEYS`);
a replay whose config differs in any of them, asks for steps the recording lacks, or draws other
prompts (the data changed) stops with one line naming the difference.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from rlkit.config.schema import RlkitConfig
from rlkit.data.batch import Batch
from rlkit.errors import UserError

#: The config keys whose values decide the rollouts: a replay must match the recording in each.
MATCH_KEYS = (
    "model.path",
    "data.train_files",
    "data.synthetic",
    "data.synthetic_size",
    "data.batch_size",
    "data.max_prompt_length",
    "data.max_response_length",
    "data.shuffle",
    "rollout.n",
    "rollout.temperature",
    "rollout.top_p",
    "rollout.top_k",
    "trainer.seed",
)
_INDEX = "recording.json"


def recorded_config(cfg: RlkitConfig) -> dict[str, Any]:
    """The values of :data:`MATCH_KEYS` in ``cfg`` (what ``recording.json`` keeps)."""
    conf = OmegaConf.structured(cfg)
    out = {}
    for key in MATCH_KEYS:
        value = OmegaConf.select(conf, key)
        out[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return out


def replay_folder(cfg: RlkitConfig, run_dir: Path | None = None) -> Path | None:
    """The folder of ``trainer.replay`` (``trainer.replay_dir``, or ``RUN/replay`` when recording)."""
    mode, folder = cfg.trainer.replay, cfg.trainer.replay_dir
    if mode == "off":
        return None
    if folder:
        return Path(folder).expanduser()
    if mode == "replay":
        raise UserError(
            "trainer.replay=replay needs trainer.replay_dir", hint="set it to a recording, e.g. RUN/replay"
        )
    return run_dir / "replay" if run_dir is not None else None


def check_replay(cfg: RlkitConfig) -> None:
    """Before anything starts: a replay's recording exists, matches the config and holds every step."""
    if cfg.trainer.replay != "replay":
        return
    folder = replay_folder(cfg)
    assert folder is not None
    index = folder / _INDEX
    if not index.is_file():
        raise UserError(
            f"trainer.replay_dir={folder}: no recording there ({_INDEX} missing)",
            hint="record one first with trainer.replay=record (it writes RUN/replay)",
        )
    recorded = json.loads(index.read_text())
    for key, value in recorded_config(cfg).items():
        if recorded["config"].get(key) != value:
            raise UserError(
                f"trainer.replay: the recording in {folder} was made with {key}={recorded['config'].get(key)!r}, "
                f"this run has {key}={value!r}",
                hint=f"set {key} as in the recording, or record again",
            )
    missing = [s for s in range(1, cfg.trainer.total_steps + 1) if str(s) not in recorded["steps"]]
    if missing:
        have = sorted(int(s) for s in recorded["steps"])
        raise UserError(
            f"trainer.replay: the recording in {folder} has no step {missing[0]} (it has steps "
            f"{have[0] if have else '-'}..{have[-1] if have else '-'})",
            hint=f"set trainer.total_steps<={len(have)} or record a longer run",
        )


def _prompt_hash(prompts: Batch) -> str:
    return hashlib.sha256(prompts["prompts"].numpy().tobytes()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot record a value of type {type(value).__name__}")


def save_batch(stem: Path, batch: Batch) -> None:
    """Write ``batch`` as ``STEM.safetensors`` (tensor columns) and ``STEM.json`` (the rest; no pickle)."""
    save_file({k: v.detach().cpu().clone() for k, v in batch.tensors.items()}, f"{stem}.safetensors.tmp")
    os.replace(f"{stem}.safetensors.tmp", f"{stem}.safetensors")
    other = {"non_tensors": {k: list(v) for k, v in batch.non_tensors.items()}, "meta": batch.meta}
    Path(f"{stem}.json").write_text(json.dumps(other, default=_jsonable))


def load_batch(stem: Path) -> Batch:
    """The batch :func:`save_batch` wrote to ``stem``."""
    tensors: dict[str, torch.Tensor] = load_file(f"{stem}.safetensors")
    other = json.loads(Path(f"{stem}.json").read_text())
    return Batch(tensors=tensors, non_tensors=other["non_tensors"], meta=other["meta"])


class RolloutRecorder:
    """Writes every generation round's batch to the recording folder."""

    def __init__(self, folder: Path, cfg: RlkitConfig) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        index = folder / _INDEX
        old = json.loads(index.read_text()) if index.is_file() else {}
        self.index: dict[str, Any] = {"config": recorded_config(cfg), "steps": old.get("steps", {})}
        if old.get("config") not in (None, self.index["config"]):
            self.index["steps"] = {}  # another config: the old rounds no longer belong to it

    def rollouts(self, step: int, round_: int, prompts: Batch, batch: Batch) -> Batch:
        """Record ``batch`` (generated for ``prompts``) and return it unchanged."""
        save_batch(self.folder / f"step_{step:06d}_round_{round_}", batch)
        rounds = self.index["steps"].setdefault(str(step), {})
        rounds[str(round_)] = _prompt_hash(prompts)
        tmp = self.folder / f".{_INDEX}.tmp"
        tmp.write_text(json.dumps(self.index, indent=1))
        os.replace(tmp, self.folder / _INDEX)
        return batch


class RolloutReplayer:
    """Returns the recorded batch of a round instead of generating one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index = json.loads((folder / _INDEX).read_text())

    def rollouts(self, step: int, round_: int, prompts: Batch) -> Batch:
        """The recorded batch of ``(step, round_)``; its prompts must be the ones drawn now."""
        recorded = self.index["steps"].get(str(step), {}).get(str(round_))
        if recorded is None:
            raise UserError(
                f"trainer.replay: the recording in {self.folder} has no round {round_} of step {step}",
                hint="the batch filter kept other prompts than when recording: replay with the same reward and filter",
            )
        if recorded != _prompt_hash(prompts):
            raise UserError(
                f"trainer.replay: step {step} drew other prompts than the recording in {self.folder}",
                hint="the data or its order changed (data files, data.* keys, or a resume point): record again",
            )
        return load_batch(self.folder / f"step_{step:06d}_round_{round_}")


def open_replay(cfg: RlkitConfig, run_dir: Path) -> RolloutRecorder | RolloutReplayer | None:
    """The recorder or replayer of ``trainer.replay`` (None when it is off)."""
    folder = replay_folder(cfg, run_dir)
    if folder is None:
        return None
    if cfg.trainer.replay == "record":
        return RolloutRecorder(folder, cfg)
    return RolloutReplayer(folder)
