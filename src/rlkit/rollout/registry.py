"""The rollout engines rlkit knows, as data: ``rollout.engine`` name -> ``module:class``.

A new engine is a new module whose class implements :class:`~rlkit.rollout.base.RolloutEngine`,
takes the common options (:func:`build_engine`) and says which models it cannot run
(``unsupported_reason(config_json) -> str | None``), plus one entry here. Nothing else branches on an
engine's name: the trainer's rollout worker and ``rlkit generate`` build engines through this module.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from rlkit.errors import UserError
from rlkit.rollout.base import RolloutEngine

# Order matters: ``auto`` picks the first engine that can run the model.
ENGINES: dict[str, str] = {
    "native": "rlkit.rollout.native:NativeEngine",
    "hf": "rlkit.rollout.hf:HFEngine",
}
AUTO = "auto"


def engine_class(name: str) -> type:
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
    cls: type = getattr(importlib.import_module(module), attr)
    return cls


def engines_for(hf_config: dict[str, Any]) -> list[str]:
    """Names of the engines that can run a model with this ``config.json``, in ``auto``'s order."""
    return [name for name in ENGINES if engine_class(name).unsupported_reason(hf_config) is None]


def resolve_engine(name: str, hf_config: dict[str, Any]) -> str:
    """The engine to use for ``rollout.engine=name`` (``auto`` resolved) and a model's ``config.json``.

    Raises:
        UserError: an unknown name, or an engine that cannot run this model (the message names the
            engines that can).
    """
    if name == AUTO:
        able = engines_for(hf_config)
        if not able:
            raise UserError(
                f"no rollout engine can run model_type {hf_config.get('model_type')!r}",
                hint="use a model that transformers' AutoModelForCausalLM loads",
            )
        return able[0]
    reason = engine_class(name).unsupported_reason(hf_config)
    if reason is None:
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


def engine_versions() -> dict[str, str | None]:
    """Each registered engine's version, or None where it cannot be imported (``rlkit doctor``)."""
    out: dict[str, str | None] = {}
    for name in ENGINES:
        try:
            out[name] = str(engine_class(name).version())
        except ImportError:
            out[name] = None
    return out
