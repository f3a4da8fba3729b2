"""The rollout engines rlkit knows, as data: ``rollout.engine`` name -> ``module:class``.

A new engine is a new module whose class implements :class:`~rlkit.rollout.base.RolloutEngine`,
says which models it cannot run (``unsupported_reason(config_json) -> str | None``) and its version
(``version() -> str``, ``ImportError`` where its package is missing), plus one entry here. It is
built either over rlkit's loaded model with the common options (:func:`build_engine`), or, where
the class sets ``loads_checkpoint = True`` (vLLM loads the folder itself), by
``from_checkpoint(model_path, **common, **options)`` with ``options`` its own config group
``rollout.<name>``; such a class may also check those options (``check_options(config_json,
options)``, raising :class:`~rlkit.errors.UserError`). Nothing else branches on an engine's name:
the trainer's rollout worker and ``rlkit generate`` build engines through this module.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlkit.errors import UserError
from rlkit.rollout.base import InFlightWeights, RolloutEngine

ENGINES: dict[str, str] = {
    "native": "rlkit.rollout.native:NativeEngine",
    "hf": "rlkit.rollout.hf:HFEngine",
    "vllm": "rlkit.rollout.vllm_engine:VllmEngine",
    "server": "rlkit.rollout.server_engine:ServerEngine",
}
AUTO = "auto"
# The engines ``auto`` picks from, in order (the first that can run the model): the built-in ones.
AUTO_ENGINES: tuple[str, ...] = ("native", "hf")


def engine_class(name: str) -> Any:
    """The class registered under ``name``.

    Raises:
        UserError: no engine has that name.
    """
    target = ENGINES.get(name)
    if target is None:
        raise UserError(
            f"rollout.engine={name!r} is not a rollout engine",
            hint=f"use one of {', '.join([AUTO, *ENGINES])}",
        )
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    return cls


def takes_weights_in_flight(name: str) -> bool:
    """Whether engine ``name`` implements :class:`~rlkit.rollout.base.InFlightWeights` (partial rollouts)."""
    return issubclass(engine_class(name), InFlightWeights)


def in_flight_engines() -> list[str]:
    """The registered engines that take weights in the middle of a generation."""
    return [name for name in ENGINES if takes_weights_in_flight(name)]


def engines_for(hf_config: dict[str, Any]) -> list[str]:
    """Names of the built-in engines that can run a model with this ``config.json``, in ``auto``'s order."""
    return [name for name in AUTO_ENGINES if engine_class(name).unsupported_reason(hf_config) is None]


def resolve_engine(name: str, hf_config: dict[str, Any], options: dict[str, Any] | None = None) -> str:
    """The engine to use for ``rollout.engine=name`` (``auto`` resolved) and a model's ``config.json``.

    Args:
        name: ``auto`` or a key of :data:`ENGINES`.
        hf_config: The model's ``config.json``.
        options: The engine's own config group (``rollout.<name>``) where it has one, checked by the
            engine's ``check_options``.

    Raises:
        UserError: an unknown name, an engine whose package is missing, or one that cannot run this
            model (the message names the engines that can).
    """
    if name == AUTO:
        able = engines_for(hf_config)
        if not able:
            raise UserError(
                f"no rollout engine can run model_type {hf_config.get('model_type')!r}",
                hint="use a model that transformers' AutoModelForCausalLM loads",
            )
        return able[0]
    cls = engine_class(name)
    try:
        cls.version()
    except ImportError as exc:
        raise UserError(
            f"rollout.engine={name} needs a package that is not installed ({exc})",
            hint=getattr(cls, "INSTALL_HINT", "install it, or use rollout.engine=auto"),
        ) from exc
    reason = cls.unsupported_reason(hf_config)
    if reason is None:
        check = getattr(cls, "check_options", None)
        if options is not None and callable(check):
            check(hf_config, options)
        return name
    able = engines_for(hf_config)
    raise UserError(
        f"rollout.engine={name} cannot run this model ({reason})",
        hint=f"use rollout.engine={' or '.join([AUTO, *able])}" if able else "use another model",
    )


def build_engine(
    name: str,
    model: nn.Module,
    *,
    device: Any = None,
    max_num_seqs: int = 256,
    max_model_len: int | None = None,
    kv_cache_tokens: int | float | None = None,
    cuda_graphs: bool = True,
    tokenizer: Any | None = None,
) -> RolloutEngine:
    """Build engine ``name`` (not ``auto``: resolve it first) over a loaded model with the common options.

    Args:
        name: A key of :data:`ENGINES`.
        model: The model as ``rlkit.models.load_causal_lm`` returns it.
        device: Where to run (default: where the model is).
        max_num_seqs: Most sequences decoded together.
        max_model_len: Longest prompt + completion (None: what each call needs).
        kv_cache_tokens: KV-cache budget (tokens, or a fraction of free device memory) where the
            engine preallocates one.
        cuda_graphs: Capture decode steps in CUDA graphs where the engine can.
        tokenizer: For stop strings and the default stop tokens.
    """
    cls = engine_class(name)
    engine: RolloutEngine = cls(
        model,
        device=device,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        kv_cache_tokens=kv_cache_tokens,
        cuda_graphs=cuda_graphs,
        tokenizer=tokenizer,
    )
    return engine


def loads_checkpoint(name: str) -> bool:
    """Whether engine ``name`` loads the model folder itself (vLLM) instead of rlkit's loaded model."""
    return name != AUTO and bool(getattr(engine_class(name), "loads_checkpoint", False))


def _own_folder(engine: RolloutEngine, folder: str) -> RolloutEngine:
    """Remove ``folder`` when ``engine`` closes (or is collected, or the process exits)."""
    cleanup = weakref.finalize(engine, shutil.rmtree, folder, True)
    close = engine.close

    def close_and_clean() -> None:
        try:
            close()
        finally:
            cleanup()

    engine.close = close_and_clean  # type: ignore[method-assign]
    return engine


def _from_checkpoint(
    cls: Any, model_path: str, dtype: torch.dtype, seed: int, **settings: Any
) -> RolloutEngine:
    """``cls.from_checkpoint`` on a folder; a built-in model (``builtin:NAME``) is first exported.

    The built-in model is written as a Hugging Face folder (weights as ``load_causal_lm`` gives them
    for ``seed``, the built-in tokenizer and chat template) in a temporary folder the engine's
    ``close`` removes; the trainer's first weight push replaces the weights anyway.
    """
    from rlkit.models.tokenizer import BUILTIN_PREFIX

    common = {"dtype": str(dtype).removeprefix("torch."), "seed": seed, **settings}
    if not str(model_path).startswith(BUILTIN_PREFIX):
        engine: RolloutEngine = cls.from_checkpoint(model_path, **common)
        return engine
    from rlkit.models.loader import export_builtin

    folder = tempfile.mkdtemp(prefix="rlkit-builtin-")
    try:
        exported = export_builtin(model_path, Path(folder) / "model", dtype=dtype, seed=seed)
        engine = cls.from_checkpoint(exported, **common)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return _own_folder(engine, folder)


def build_engine_from_path(
    name: str,
    model_path: str,
    *,
    dtype: torch.dtype,
    device: Any = None,
    max_num_seqs: int = 256,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.5,
    cuda_graphs: bool = True,
    seed: int = 0,
    tokenizer: Any | None = None,
    options: dict[str, Any] | None = None,
    log_dir: str | None = None,
) -> RolloutEngine:
    """Build engine ``name`` (resolved) for a model folder or ``builtin:NAME``: how the trainer builds one.

    Engines over rlkit's model get it loaded here (:func:`build_engine`, ``gpu_memory_utilization``
    as the fraction of *free* device memory for the KV cache); engines that load the folder
    themselves get the common settings, ``options`` (their ``rollout.<name>`` group) and
    ``log_dir`` (where a server they start writes its log).
    """
    cls = engine_class(name)
    if loads_checkpoint(name):
        return _from_checkpoint(
            cls,
            model_path,
            dtype,
            seed,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            cuda_graphs=cuda_graphs,
            log_dir=log_dir,
            **(options or {}),
        )
    from rlkit.models import load_causal_lm

    model = load_causal_lm(model_path, dtype=dtype, device=device or "cpu", seed=seed)
    return build_engine(
        name,
        model,
        device=device,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        kv_cache_tokens=gpu_memory_utilization,  # a fraction of the free device memory
        cuda_graphs=cuda_graphs,
        tokenizer=tokenizer,
    )


def engine_versions() -> dict[str, str | None]:
    """Each registered engine's version, or None where it cannot be imported (``rlkit doctor``)."""
    out: dict[str, str | None] = {}
    for name in ENGINES:
        try:
            out[name] = str(engine_class(name).version())
        except ImportError:
            out[name] = None
    return out
