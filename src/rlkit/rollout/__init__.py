"""Rollout engines behind one interface (:class:`RolloutEngine`), built by name through
:mod:`rlkit.rollout.registry`: ``native`` (built in) and ``hf`` (any transformers causal LM)."""

from __future__ import annotations

from rlkit.rollout.base import (
    Completion,
    EngineGauges,
    FinishReason,
    InFlightWeights,
    ProgressFn,
    RolloutEngine,
    SamplingParams,
)
from rlkit.rollout.hf import HFEngine
from rlkit.rollout.native import EngineStats, NativeEngine
from rlkit.rollout.registry import ENGINES, build_engine, resolve_engine
from rlkit.rollout.tensors import completions_to_tensors

__all__ = [
    "ENGINES",
    "Completion",
    "EngineGauges",
    "EngineStats",
    "FinishReason",
    "HFEngine",
    "InFlightWeights",
    "NativeEngine",
    "ProgressFn",
    "RolloutEngine",
    "SamplingParams",
    "build_engine",
    "completions_to_tensors",
    "resolve_engine",
]
