"""Checks of a composed config that need no Ray and no weights: ``--dry-run``, and the start of every run.

``rlkit train RECIPE --dry-run``, ``rlkit config RECIPE --check`` and ``rlkit sft --dry-run`` run
:func:`preflight` and print what it checked; ``rlkit train`` and ``rlkit sft`` run it before Ray
starts, so a missing column, an unknown ``data_source``, a logger that is not installed or a GPU
profile on a laptop fails in about a second with one line instead of after the cluster is up. Keys,
ranges and the rules between keys were already checked when the config was composed.

Each check reads as little as it can: the parquet schema and the one column naming the data
source (never the prompts), a user's reward file parsed with :mod:`ast` (never imported here), and
a model's ``config.json`` (never its weights).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rlkit.ckpt.run_folder import check_out_dir
from rlkit.config.schema import RlkitConfig
from rlkit.data.hub import hub_cache_dir, is_hub_id, resolve_model_path
from rlkit.data.sources import is_offline
from rlkit.errors import UserError
from rlkit.models import load_hf_config, native_unsupported_reason
from rlkit.rewards.custom import load_custom_reward
from rlkit.rewards.scorers import check_data_sources
from rlkit.trainer.settings import resolve_device

BUILTIN_PREFIX = "builtin:"
#: trainer.loggers entry -> the module it imports.
_LOGGER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "prometheus": "prometheus_client"}
#: the pip line of each (where it is not the entry's own name).
_LOGGER_INSTALL = {"prometheus": "pip install 'rlkit[prometheus]' (or pip install prometheus-client)"}


def preflight(cfg: RlkitConfig, command: str = "train") -> list[str]:
    """Run every check of ``cfg`` that needs no Ray and no weights; one line per check.

    Args:
        cfg: A composed config (:func:`rlkit.config.compose.to_dataclass`).
        command: ``train`` (RL) or ``sft``.

    Returns:
        What was checked, one line each, for ``--dry-run`` to print.

    Raises:
        UserError: The first problem found, in one line with its fix.
    """
    if command == "sft":
        checks: list[Callable[[RlkitConfig], str]] = [_hardware, _model_readable, _lora, _sft_data, _loggers]
    else:
        checks = [
            _hardware,
            _model_readable,
            _lora,
            _training_engine,
            _checkpointing,
            _teachers,
            _rollout_engine,
            _rl_data_and_scorers,
            _loggers,
            _replay,
            _run_folder,
        ]
    return [check(cfg) for check in checks]


def _hardware(cfg: RlkitConfig) -> str:
    device = resolve_device(cfg)
    hw = cfg.hardware
    profile = hw.profile or "none (schema values)"
    workers = hw.nodes * hw.devices_per_node
    address = hw.ray_address or os.environ.get("RAY_ADDRESS")
    if hw.nodes > 1 and not address:
        # A local Ray is one node: the pool could never be placed.
        raise UserError(
            f"hardware.nodes={hw.nodes} needs an existing Ray cluster, and neither hardware.ray_address "
            "nor RAY_ADDRESS names one",
            hint="start it with `ray start --head` / `ray start --address` (see `rlkit launch ray`), "
            "then pass hardware.ray_address=HEAD:6379 or set RAY_ADDRESS",
        )
    where = f" on {hw.nodes} nodes of the Ray cluster at {address}" if hw.nodes > 1 else ""
    return f"hardware: profile {profile}, device {device} ({workers} worker(s){where})"


def _training_engine(cfg: RlkitConfig) -> str:
    """``actor.strategy`` / ``critic.strategy`` = megatron: a GPU, and models the sizes split evenly."""
    sizes, hw = cfg.actor.megatron, cfg.hardware
    models = {
        "actor": cfg.model.path,
        "critic": cfg.critic.model_path or cfg.model.path,
        "ref": cfg.model.path,
    }
    users = [role for role in models if getattr(cfg, role).strategy == "megatron"]
    if not users:
        return "training engine: FSDP2"
    device = resolve_device(cfg)
    if device not in ("cuda", "rocm"):
        raise UserError(
            f"{users[0]}.strategy=megatron needs a GPU, and this run's device is {device}: megatron-core "
            "places its tensors on torch.cuda.current_device()",
            hint=f"run on a GPU machine, or use {users[0]}.strategy=fsdp",
        )
    tp, ep, pp, vpp, cp = (
        sizes.tensor_parallel,
        sizes.expert_parallel,
        sizes.pipeline_parallel,
        sizes.virtual_pipeline,
        sizes.context_parallel,
    )
    from rlkit.training.megatron_convert import (
        parallel_shape_problem,
    )  # pure tensor mapping, no Megatron import

    for role in users:
        hf = model_config_json(models[role])
        problem = (
            None if hf is None else parallel_shape_problem(hf, tp, ep, pp, vpp, cp, sizes.sequence_parallel)
        )
        if problem is not None:
            raise UserError(
                f"{role}: {problem}", hint=f"choose sizes that divide the model, or use {role}.strategy=fsdp"
            )
    world = hw.nodes * hw.devices_per_node - (hw.rollout_devices if hw.placement == "split" else 0)
    return (
        f"training engine: Megatron-core for the {' and '.join(users)}, TP {tp}"
        f"{' (sequence parallel)' if sizes.sequence_parallel else ''} x PP {pp}"
        f"{f' ({vpp} virtual stages each)' if vpp > 1 else ''} x CP {cp} x EP {ep}, "
        f"data parallel {world // (tp * pp * cp)}"
    )


def _checkpointing(cfg: RlkitConfig) -> str:
    """``model.gradient_checkpointing``, null resolved as the run will (:mod:`rlkit.trainer.plan`)."""
    from rlkit.trainer.plan import checkpointing_choice

    on, why = checkpointing_choice(cfg)
    return f"gradient checkpointing: {'on' if on else 'off'}" + ("" if why == "set" else f" (null: {why})")


def _model_readable(cfg: RlkitConfig) -> str:
    path = cfg.model.path
    hf = model_config_json(path)
    if hf is None:
        return f"model: {path} is not a local folder or cached; its config.json is checked when the run fetches it"
    reason = native_unsupported_reason(hf)
    for key, other in (
        ("critic.model_path", cfg.critic.model_path),
        ("reward.model_path", cfg.reward.model_path),
    ):
        if other:
            model_config_json(other, key=key)
    if cfg.reward.model_path and Path(cfg.reward.model_path).expanduser().is_dir():
        from rlkit.rewards.reward_model import refuse_pickled_weights  # transformers: only when needed

        refuse_pickled_weights(Path(cfg.reward.model_path).expanduser())
    _tokenizer_exists(cfg.model.tokenizer)
    family = "native architecture" if reason is None else f"transformers fallback: {reason}"
    return f"model: {path} ({hf.get('model_type', '?')}, {family})"


def _lora(cfg: RlkitConfig) -> str:
    """``model.lora_target_modules`` name linear layers of the model (native models: their structure on meta)."""
    m = cfg.model
    if m.lora_rank == 0:
        return "LoRA: off (every weight of the actor trains)"
    hf = model_config_json(m.path)
    if hf is None or native_unsupported_reason(hf) is not None:
        return f"LoRA: rank {m.lora_rank} (target modules checked when the model loads)"
    from rlkit.models import load_causal_lm
    from rlkit.training.lora import resolve_target_modules

    targets = resolve_target_modules(load_causal_lm(m.path, device="meta"), list(m.lora_target_modules))
    return f"LoRA: rank {m.lora_rank}, alpha {m.lora_alpha}, on {', '.join(targets)}"


def _teachers(cfg: RlkitConfig) -> str:
    """Each distillation teacher is readable and shares the student's vocabulary (top-k ids index it)."""
    from rlkit.trainer.settings import teacher_names

    teachers = teacher_names(cfg)
    if not teachers:
        return "teachers: none (no distillation)"
    student = model_config_json(cfg.model.path)
    for name, path in teachers.items():
        hf = model_config_json(path, key="algo.distill.teachers")
        if hf is None or student is None:
            continue
        if hf.get("vocab_size") != student.get("vocab_size"):
            raise UserError(
                f"algo.distill.teachers: teacher {name!r} has vocab_size {hf.get('vocab_size')} but the "
                f"student ({cfg.model.path}) has {student.get('vocab_size')}",
                hint="distillation compares token ids: pick a teacher with the student's tokenizer",
            )
        if cfg.algo.distill.topk > int(hf.get("vocab_size", cfg.algo.distill.topk)):
            raise UserError(
                f"algo.distill.topk={cfg.algo.distill.topk} exceeds teacher {name!r}'s vocabulary",
                hint="e.g. algo.distill.topk=32",
            )
    return f"teachers: {', '.join(teachers)} (loss {cfg.algo.distill.loss}, top-{cfg.algo.distill.topk})"


def _rollout_engine(cfg: RlkitConfig) -> str:
    """``rollout.engine`` against the model: package installed, model runnable, its own keys."""
    from rlkit.rollout.registry import AUTO, AUTO_ENGINES, resolve_engine
    from rlkit.trainer.settings import engine_options

    name = cfg.rollout.engine
    hf = model_config_json(cfg.model.path)
    if hf is None:
        for candidate in AUTO_ENGINES if name == AUTO else (name,):
            _partial_rollouts_engine(cfg, candidate)
        return f"rollout engine: {name} (checked against the model when the run fetches it)"
    if name != AUTO:  # before resolving: a missing package is not the first thing to fix
        _partial_rollouts_engine(cfg, name)
    resolved = resolve_engine(name, hf, engine_options(cfg))
    _partial_rollouts_engine(cfg, resolved)
    return f"rollout engine: {resolved}" + (" (auto)" if name == AUTO else "")


def _partial_rollouts_engine(cfg: RlkitConfig, engine: str) -> None:
    """``trainer.partial_rollouts=continue`` needs an engine that takes weights mid-generation."""
    from rlkit.rollout.registry import in_flight_engines, takes_weights_in_flight

    if cfg.trainer.partial_rollouts == "continue" and not takes_weights_in_flight(engine):
        able = in_flight_engines()
        raise UserError(
            f"trainer.partial_rollouts=continue: rollout.engine={engine} cannot take new weights in the "
            f"middle of a generation (only {', '.join(able)} can)",
            hint=f"set rollout.engine={' or '.join(able)}, or trainer.partial_rollouts=finish",
        )


def model_config_json(path: str, *, key: str = "model.path") -> dict[str, Any] | None:
    """A model's ``config.json`` (built-in, local folder, or a hub id in the local HF cache).

    Returns None for a hub id that is not cached (only the run, which downloads it, can check it).

    Raises:
        UserError: A local path that is not a model folder, a config.json that is not JSON, or a hub
            id that is not cached while ``HF_HUB_OFFLINE`` is set (the run could not fetch it).
    """
    if path.startswith(BUILTIN_PREFIX) or Path(path).expanduser().is_dir():
        try:
            return load_hf_config(path)
        except UserError as exc:
            raise UserError(exc.message.replace("model.path", key), hint=exc.hint) from exc
    if is_hub_id(path):
        cached = _cached_hub_file(path, "config.json")
        if cached is None and is_offline():
            resolve_model_path(path, key=key)  # offline: reads the cache only, raises its one line
        return json.loads(Path(cached).read_text()) if cached else None
    raise UserError(
        f"{key}: no such folder {path!r}",
        hint="pass a local model folder (fetch one with `rlkit download REPO_ID`), a hub id, or builtin:tiny",
    )


def _tokenizer_exists(path: str | None) -> None:
    if not path or path.startswith(BUILTIN_PREFIX) or Path(path).expanduser().is_dir():
        return
    if is_hub_id(path):
        return  # fetched with the model
    raise UserError(
        f"model.tokenizer: no such folder {path!r}",
        hint="set it to a tokenizer folder or hub id, or null to use model.path's tokenizer",
    )


def _cached_hub_file(repo_id: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    # the cache folder as the environment names it now (HF_HUB_CACHE / HF_HOME), like the loaders
    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hub_cache_dir()))
    return found if isinstance(found, str) else None


def _parquet_schema(file: str) -> pa.Schema:
    path = Path(file).expanduser()
    if not path.is_file():
        raise UserError(f"no such data file: {path}", hint="run `rlkit data NAME` to prepare one")
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: cannot read it as parquet: {exc}") from exc


def _require(file: str, schema: pa.Schema, columns: list[str]) -> None:
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise UserError(
            f"{Path(file).expanduser()}: no column {', '.join(repr(m) for m in missing)} "
            f"(columns present: {', '.join(schema.names)})",
            hint="prepare it with `rlkit data` (verl's schema) or set the data.*_key options",
        )


def _ground_truth(file: str, schema: pa.Schema) -> None:
    kind = schema.field("reward_model").type
    if pa.types.is_struct(kind) and kind.get_field_index("ground_truth") < 0:
        raise UserError(
            f"{Path(file).expanduser()}: column 'reward_model' has no field 'ground_truth' "
            f"(it has: {', '.join(f.name for f in kind)})",
            hint="each row's reward_model must be {'ground_truth': ..., 'style': 'rule'} (verl's schema)",
        )


def _data_sources(file: str, column: str) -> set[str]:
    table = pq.read_table(Path(file).expanduser(), columns=[column])
    return {str(v) for v in pc.unique(table.column(column)).to_pylist()}


def _rl_data_and_scorers(cfg: RlkitConfig) -> str:
    d = cfg.data
    files = [*d.train_files, *d.val_files]
    sources: set[str] = set() if d.train_files else {d.synthetic}
    for file in files:
        schema = _parquet_schema(file)
        _require(file, schema, [d.prompt_key, d.reward_fn_key, "reward_model"])
        _ground_truth(file, schema)
        sources |= _data_sources(file, d.reward_fn_key)
    what = f"{len(files)} parquet file(s)" if d.train_files else f"the synthetic {d.synthetic} task"
    if not d.train_files and d.val_files:
        what += f" + {len(d.val_files)} validation file(s)"
    return f"data: {what}, columns ok; " + _scorers(cfg, sources)


def _scorers(cfg: RlkitConfig, sources: set[str]) -> str:
    r = cfg.reward
    if r.custom.path:
        load_custom_reward(r.custom.path, r.custom.name, batched=r.manager == "batch")
        return f"rewards: {r.custom.name}() in {r.custom.path} (parsed, not run)"
    if r.model_path:
        return f"rewards: reward model {r.model_path}"
    check_data_sources(sources)
    return f"rewards: built-in scorers for {', '.join(sorted(sources))}"


def _sft_data(cfg: RlkitConfig) -> str:
    d, s = cfg.data, cfg.sft
    columns = [s.prompt_key, s.response_key] if s.prompt_key else [s.messages_key]
    for file in [*d.train_files, *d.val_files]:
        if Path(file).suffix == ".parquet":
            _require(file, _parquet_schema(file), [c for c in columns if c])
        elif not Path(file).expanduser().is_file():
            raise UserError(f"no such data file: {Path(file).expanduser()}")
    if not d.train_files:
        return f"data: the synthetic {d.synthetic} task as chats"
    return (
        f"data: {len(d.train_files) + len(d.val_files)} file(s), columns {', '.join(c for c in columns if c)}"
    )


def _loggers(cfg: RlkitConfig) -> str:
    for name in cfg.trainer.loggers:
        module = _LOGGER_MODULES.get(name)
        if module and importlib.util.find_spec(module) is None:
            hint = _LOGGER_INSTALL.get(name, f"pip install {name}")
            raise UserError(f"trainer.loggers has {name} but it is not installed", hint=hint)
    return f"loggers: {', '.join(cfg.trainer.loggers)}"


def _replay(cfg: RlkitConfig) -> str:
    from rlkit.trainer.replay import check_replay

    check_replay(cfg)  # a replay's recording exists, matches this config and holds every step
    if cfg.trainer.replay == "off":
        return "rollouts: generated (trainer.replay=off)"
    return f"rollouts: trainer.replay={cfg.trainer.replay} ({cfg.trainer.replay_dir or 'RUN/replay'})"


def _run_folder(cfg: RlkitConfig) -> str:
    if not cfg.trainer.out_dir:
        return "run folder: a fresh one under runs/ (trainer.out_dir unset)"
    check_out_dir(Path(cfg.trainer.out_dir).expanduser())
    return f"run folder: {cfg.trainer.out_dir}"
