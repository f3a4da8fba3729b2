"""Rollout engines behind one interface (:class:`RolloutEngine`): the native engine is built in."""

from __future__ import annotations

from rlkit.rollout.base import Completion, FinishReason, ProgressFn, RolloutEngine, SamplingParams
from rlkit.rollout.native import EngineStats, NativeEngine
from rlkit.rollout.tensors import completions_to_tensors

__all__ = [
    "Completion",
    "EngineStats",
    "FinishReason",
    "NativeEngine",
    "ProgressFn",
    "RolloutEngine",
    "SamplingParams",
    "completions_to_tensors",
]
