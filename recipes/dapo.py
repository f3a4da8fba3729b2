"""DAPO hooks: dynamic sampling (Yu et al. 2025, https://arxiv.org/abs/2503.14476, docs/recipes/dapo.md).

A group (the samples of one prompt) whose filter metric does not vary carries no signal about what
the metric rewards: with the scorer's score as metric, every sample was equally right or wrong.
Dynamic sampling drops such groups after scoring and generates more prompts until
``data.batch_size`` prompts survive, for at most ``algo.filter_groups.max_num_gen_batches`` rounds.
When the rounds run out the step is topped up with groups that were dropped in the last round (their
advantages come from the overlong shaping alone) and a warning is logged; verl raises instead. The
rest of DAPO (clip-higher, token-mean loss, overlong reward shaping, no KL) is config:
``recipes/dapo.yaml``.

Shape legend: B = rows (prompts x samples).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.rewards import overlong_penalty
from rlkit.trainer.hooks import Hooks, first_prompts

if TYPE_CHECKING:
    from rlkit.config.schema import RlkitConfig

logger = logging.getLogger(__name__)

# Values closer than this count as equal: "score" is recovered by subtracting the overlong penalty
# from the shaped float32 reward, which leaves rounding noise far below any real score difference.
TOLERANCE = 1e-5
METRICS = ("score", "seq_reward")


@dataclass(frozen=True)
class FilterSettings:
    """What the filter needs from the config.

    Attributes:
        enable: ``algo.filter_groups.enable``.
        metric: ``algo.filter_groups.metric``: ``score``, ``seq_reward`` or a batch column.
        overlong: ``(max_response_length, buffer_len, penalty_factor)`` when the reward manager adds
            DAPO's overlong penalty (``score`` then takes it off again), else None.
    """

    enable: bool
    metric: str
    overlong: tuple[int, int, float] | None = None

    @classmethod
    def from_config(cls, cfg: RlkitConfig) -> FilterSettings:
        shaped = cfg.reward.manager == "dapo" and cfg.reward.overlong.enable
        overlong = cfg.reward.overlong
        return cls(
            enable=cfg.algo.filter_groups.enable,
            metric=cfg.algo.filter_groups.metric,
            overlong=(
                (cfg.data.max_response_length, overlong.buffer_len, overlong.penalty_factor)
                if shaped
                else None
            ),
        )


def filter_values(batch: Batch, settings: FilterSettings) -> np.ndarray:
    """The per-sample value whose spread decides if a group is kept.

    ``seq_reward`` is the reward the trainer uses (``seq_score``, after overlong shaping); ``score`` is
    the scorer's own score (``seq_score`` minus the overlong penalty, as verl's ``score``); any other
    name is read from the batch column of that name.

    Raises:
        UserError: An unknown metric.

    Shape:
        return: (B,) float64.
    """
    seq_score = batch.tensors["seq_score"]
    if settings.metric == "seq_reward":
        return seq_score.double().numpy()
    if settings.metric == "score":
        if settings.overlong is None:
            return seq_score.double().numpy()
        lengths = batch.tensors["response_mask"].sum(-1)
        return (seq_score - overlong_penalty(lengths, *settings.overlong)).double().numpy()
    if settings.metric in batch:
        values = batch[settings.metric]
        return np.asarray(
            values.double().numpy() if isinstance(values, torch.Tensor) else values, dtype=float
        )
    raise UserError(
        f"algo.filter_groups.metric={settings.metric!r} is neither {' nor '.join(METRICS)} nor a batch column",
        hint=f"use one of {', '.join(METRICS)}",
    )


def informative_rows(uids: np.ndarray, values: np.ndarray, tolerance: float = TOLERANCE) -> np.ndarray:
    """Rows of the groups whose values vary (max - min > tolerance); a group of one is kept, as verl.

    Shape:
        uids, values: (B,). return: (B,) bool.
    """
    keep = np.zeros(len(uids), dtype=bool)
    groups: dict[Any, list[int]] = {}
    for row, uid in enumerate(uids):
        groups.setdefault(uid, []).append(row)
    for rows in groups.values():
        group = values[rows]
        keep[rows] = len(rows) == 1 or float(group.max() - group.min()) > tolerance
    return keep


class DAPOHooks(Hooks):
    """Dynamic sampling. State lives for one step: ``before_update`` reports it and resets it."""

    def __init__(self) -> None:
        self.settings: FilterSettings | None = None
        self.dropped: Batch | None = None
        self.topped_up = 0

    def after_generate(self, run: Any, prompts: Batch, batch: Batch) -> Batch:
        # filter_batch gets no run: the settings are read here, before each round is scored
        self.settings = FilterSettings.from_config(run.cfg)
        return batch

    def filter_batch(self, batch: Batch) -> Batch:
        if self.settings is None:
            raise ValueError("DAPOHooks.filter_batch called before after_generate")
        if not self.settings.enable:
            return batch
        keep = informative_rows(batch.non_tensors["uid"], filter_values(batch, self.settings))
        self.dropped = batch.index(np.flatnonzero(~keep))
        return batch.index(np.flatnonzero(keep))

    def max_generation_rounds(self, cfg: RlkitConfig) -> int:
        groups = cfg.algo.filter_groups
        return groups.max_num_gen_batches if groups.enable else 1

    def on_exhausted(self, rounds: int, kept: int, wanted: int) -> Batch | None:
        if self.dropped is None or len(self.dropped) == 0:
            return None
        filler = first_prompts(self.dropped, wanted - kept)
        added = len(np.unique(filler.non_tensors["uid"]))
        self.topped_up += added
        logger.warning(
            "dynamic sampling: %d of %d prompts had varying rewards after %d rounds; training on %d groups "
            "without reward variance as well (raise algo.filter_groups.max_num_gen_batches to sample more)",
            kept,
            wanted,
            rounds,
            added,
        )
        return filler

    def before_update(self, run: Any, batch: Batch) -> dict[str, float]:
        metrics = {"dapo/prompts_topped_up": float(self.topped_up)}
        self.dropped, self.topped_up = None, 0
        return metrics


def hooks() -> Hooks:
    return DAPOHooks()
