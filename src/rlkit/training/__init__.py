"""FSDP2 training engine: the actor, reference, teacher and critic roles, packed micro-batches by token budget.

The role classes are plain Python objects constructed inside a worker process (the controller
hosts and dispatches them); each method works on the rank's shard of the batch and is collective.

Exports resolve lazily, so importing one submodule (say ``rlkit.training.micro_batches``) does not
import the models and algorithms the roles need.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ActorRole": "rlkit.training.actor",
    "CriticRole": "rlkit.training.critic",
    "RefRole": "rlkit.training.ref",
    "TeacherRole": "rlkit.training.teacher",
    "Teachers": "rlkit.training.teacher",
    "FSDPEngine": "rlkit.training.engine",
    "named_full_tensors": "rlkit.training.engine",
    "resolve_dtype": "rlkit.training.engine",
    "shard_module": "rlkit.training.engine",
    "PackedMicroBatch": "rlkit.training.micro_batches",
    "pack_rows": "rlkit.training.micro_batches",
    "partition_by_tokens": "rlkit.training.micro_batches",
    "lr_multiplier": "rlkit.training.schedule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlkit.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
