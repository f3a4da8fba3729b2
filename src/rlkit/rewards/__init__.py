"""Rewards: rule scorers, user scoring functions, sandboxed scoring workers, managers, reward models.

Attributes load on first use, so that a scoring worker process (which imports
``rlkit.rewards.pool`` and the scorers) never pays for torch or transformers.

- :func:`default_compute_score`: verl's routing by ``data_source`` to the built-in scorers.
- :func:`load_custom_reward`: a user's ``compute_score`` from a file, checked without running it.
- :class:`ScoringPool`: worker processes with memory/CPU limits and per-sample timeouts.
- :data:`reward_managers`, :func:`build_reward_manager`: ``naive``, ``batch``, ``dapo``.
- :func:`overlong_penalty`, :func:`token_level_scores`: DAPO's length shaping; score placement.
- :class:`RewardModelScorer`: a Hugging Face sequence-classification reward model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlkit.rewards.custom import CustomRewardFn, load_custom_reward
    from rlkit.rewards.managers import (
        BatchRewardManager,
        DAPORewardManager,
        NaiveRewardManager,
        RewardManager,
        RewardOutput,
        build_reward_manager,
        overlong_penalty,
        reward_managers,
        token_level_scores,
    )
    from rlkit.rewards.pool import PoolResult, ScoringPool
    from rlkit.rewards.reward_model import RewardModelScorer
    from rlkit.rewards.scorers import SCORERS, default_compute_score

_EXPORTS = {
    "CustomRewardFn": "rlkit.rewards.custom",
    "load_custom_reward": "rlkit.rewards.custom",
    "BatchRewardManager": "rlkit.rewards.managers",
    "DAPORewardManager": "rlkit.rewards.managers",
    "NaiveRewardManager": "rlkit.rewards.managers",
    "RewardManager": "rlkit.rewards.managers",
    "RewardOutput": "rlkit.rewards.managers",
    "build_reward_manager": "rlkit.rewards.managers",
    "overlong_penalty": "rlkit.rewards.managers",
    "reward_managers": "rlkit.rewards.managers",
    "token_level_scores": "rlkit.rewards.managers",
    "PoolResult": "rlkit.rewards.pool",
    "ScoringPool": "rlkit.rewards.pool",
    "RewardModelScorer": "rlkit.rewards.reward_model",
    "SCORERS": "rlkit.rewards.scorers",
    "default_compute_score": "rlkit.rewards.scorers",
}

__all__ = [
    "BatchRewardManager",
    "CustomRewardFn",
    "DAPORewardManager",
    "NaiveRewardManager",
    "PoolResult",
    "RewardManager",
    "RewardModelScorer",
    "RewardOutput",
    "SCORERS",
    "ScoringPool",
    "build_reward_manager",
    "default_compute_score",
    "load_custom_reward",
    "overlong_penalty",
    "reward_managers",
    "token_level_scores",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlkit.rewards' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
