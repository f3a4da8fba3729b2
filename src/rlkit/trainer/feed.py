"""Where a step's rollouts come from: generated for the step, or ahead of it (``trainer.mode``).

The three modes are one schedule with one number, the *depth*: how many draws of prompts the
rollout engine generates ahead of the trainer.

- ``sync``: depth 0. Every draw is generated when the step asks for it, with the weights the step
  trains (today's loop, unchanged).
- ``one_step_off``: depth 1. Right after step t has its rollouts, the rollouts of step t+1 are
  generated with the same weights, before step t's update; step t+1 trains on rollouts one policy
  version behind.
- ``async``: depth ``min(trainer.rollout_queue_size, trainer.max_staleness)``: a bounded queue of
  finished draws, each at most ``trainer.max_staleness`` versions behind when it is trained on.
  The bound holds by construction: a draw that would exceed it is not started (the rollout waits).
  A queued draw already beyond it (a run resumed with a lower bound) is generated again from its
  own prompts with the current weights, so no prompt is lost or trained twice.

A policy *version* is the trainer step whose update produced the weights (0: the initial model);
every rollout row carries ``rollout_versions`` (B, R), the version of each of its tokens. With
``trainer.partial_rollouts=continue`` weights reach a generation in flight, so one trajectory may
span versions: the engine reports each token's, and staleness is measured on a trajectory's
oldest token (its lag is the largest).

The queue is part of a checkpoint (``step_N/rollout_queue/``, written by :meth:`RolloutFeed.save`):
a resumed run trains the draws that were queued, with the prompt sampler positioned after them,
so ``one_step_off`` resumes exactly and ``async`` neither replays nor skips a prompt.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlkit.config.schema import RlkitConfig
from rlkit.data.batch import Batch
from rlkit.trainer.replay import load_batch, save_batch

#: Folder of a checkpoint that holds the queued draws.
QUEUE_DIR = "rollout_queue"

#: ``generate(prompts, step, round_) -> future rollouts``: the engine's samples of a draw, seeded by
#: the (step, round) it is meant for; they may still be generating when it returns (split placement).
Generate = Callable[[Batch, int, int], "Future[Batch]"]


@dataclass
class Draw:
    """One draw of prompts, the engine's (unscored) samples of them, and the policy version that sampled."""

    prompts: Batch
    pending: Future[Batch]
    version: int
    step: int
    round_: int
    _rollouts: Batch | None = field(default=None, repr=False)

    @property
    def rollouts(self) -> Batch:
        """The samples (waiting for them if they are still generating), each token stamped with
        ``version`` unless the engine reported per-token versions (partial rollouts)."""
        if self._rollouts is None:
            batch = self.pending.result()
            if "rollout_versions" not in batch:  # not loaded from a checkpoint, not a partial rollout
                versions = torch.full_like(batch["responses"], self.version, dtype=torch.int64)
                batch.set("rollout_versions", versions)
            self._rollouts = batch
        return self._rollouts

    @property
    def oldest_version(self) -> int:
        """The version of the draw's oldest trained token (``version`` unless a partial rollout
        started after newer weights arrived): what the staleness bound is checked on."""
        versions, mask = _versions_and_mask(self.rollouts)
        trained = versions[mask]
        return int(trained.min()) if trained.numel() else self.version


def feed_depth(cfg: RlkitConfig) -> int:
    """Draws generated ahead of the trainer under ``trainer.mode``."""
    t = cfg.trainer
    return {"sync": 0, "one_step_off": 1, "async": min(t.rollout_queue_size, t.max_staleness)}[t.mode]


def staleness_bound(cfg: RlkitConfig) -> int:
    """Most versions a trained-on rollout may lag: 0 (sync), 1 (one_step_off), ``trainer.max_staleness``."""
    return {"sync": 0, "one_step_off": 1, "async": cfg.trainer.max_staleness}[cfg.trainer.mode]


class RolloutFeed:
    """The queue of draws generated ahead of the trainer (empty and unused in ``sync`` mode).

    Args:
        depth: Draws kept ready ahead of the trainer (:func:`feed_depth`).
        max_staleness: Most versions a taken draw may lag (:func:`staleness_bound`).
        draw_prompts: The next prompts of the data order.
        generate: The engine's samples of a draw.
    """

    def __init__(
        self, depth: int, max_staleness: int, draw_prompts: Callable[[], Batch], generate: Generate
    ) -> None:
        assert depth <= max_staleness, "a draw queued deeper than the bound would always be stale"
        self.depth, self.max_staleness = depth, max_staleness
        self._draw_prompts, self._generate = draw_prompts, generate
        self.queue: deque[Draw] = deque()
        self.regenerated = 0  # stale draws generated again since the last metrics()

    def take(self, step: int, round_: int, version: int) -> Draw:
        """The draw for ``(step, round_)``: the oldest queued one, or one generated now at ``version``.

        A queued draw more than ``max_staleness`` versions behind ``version`` is generated again
        from its prompts (it cannot happen within one run; a resume may lower the bound).
        """
        if self.queue:
            draw = self.queue.popleft()
            if version - draw.oldest_version <= self.max_staleness:
                return draw
            self.regenerated += 1
            return self._new_draw(draw.prompts, step, round_, version)
        return self._new_draw(self._draw_prompts(), step, round_, version)

    def fill(self, next_step: int, version: int) -> None:
        """Generate draws ahead, at ``version``, until ``depth`` are queued (for ``next_step`` on)."""
        while len(self.queue) < self.depth:
            self.queue.append(self._new_draw(self._draw_prompts(), next_step + len(self.queue), 1, version))

    def settle(self) -> None:
        """Wait for the queued draws still generating (before the rollout engine's weights change)."""
        for draw in self.queue:
            draw.rollouts  # noqa: B018 -- waits, and raises the generation's error if it failed

    def _new_draw(self, prompts: Batch, step: int, round_: int, version: int) -> Draw:
        return Draw(prompts, self._generate(prompts, step, round_), version, step, round_)

    def metrics(self) -> dict[str, float]:
        """``async/queued`` and ``async/regenerated`` (since the last call)."""
        out = {"async/queued": float(len(self.queue)), "async/regenerated": float(self.regenerated)}
        self.regenerated = 0
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> list[dict[str, Any]]:
        """What the trainer state records of the queue: each draw's version and (step, round)."""
        return [{"version": d.version, "step": d.step, "round": d.round_} for d in self.queue]

    def save(self, step_dir: Path) -> None:
        """Write the queued draws into ``step_dir/rollout_queue/`` (nothing when the queue is empty).

        A draw still generating is waited for: a checkpoint holds what was in flight, finished.
        """
        if not self.queue:
            return
        folder = step_dir / QUEUE_DIR
        folder.mkdir()
        for i, draw in enumerate(self.queue):
            save_batch(folder / f"draw_{i}_prompts", draw.prompts)
            save_batch(folder / f"draw_{i}_rollouts", draw.rollouts)

    def load(self, step_dir: Path, state: list[dict[str, Any]]) -> None:
        """Queue the draws :meth:`save` wrote, as the trainer state ``state`` lists them."""
        folder = step_dir / QUEUE_DIR
        self.queue = deque()
        for i, entry in enumerate(state):
            rollouts: Future[Batch] = Future()
            rollouts.set_result(load_batch(folder / f"draw_{i}_rollouts"))
            prompts = load_batch(folder / f"draw_{i}_prompts")
            self.queue.append(
                Draw(prompts, rollouts, int(entry["version"]), int(entry["step"]), int(entry["round"]))
            )


def partial_metrics(batch: Batch) -> dict[str, float]:
    """``async/partial_share``: the share of trajectories whose tokens span more than one version
    (weights arrived while they were generated, ``trainer.partial_rollouts=continue``)."""
    if "rollout_versions" not in batch or len(batch) == 0:
        return {}
    versions, mask = _versions_and_mask(batch)
    big = torch.iinfo(versions.dtype).max
    newest = torch.where(mask, versions, -1).max(dim=1).values
    oldest = torch.where(mask, versions, big).min(dim=1).values
    spans = (newest > oldest) & mask.any(dim=1)
    return {"async/partial_share": float(spans.double().mean())}


def _versions_and_mask(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``rollout_versions`` (B, R) and ``response_mask`` as bool (B, R) of a rollout batch."""
    versions, mask = batch["rollout_versions"], batch["response_mask"]
    assert isinstance(versions, torch.Tensor) and isinstance(mask, torch.Tensor)
    return versions, mask.bool()


def staleness_metrics(batch: Batch, version: int) -> dict[str, float]:
    """``async/staleness_mean`` and ``async/staleness_max``: versions the trained tokens lag ``version``."""
    if "rollout_versions" not in batch:  # a hook rebuilt the batch without the column
        return {}
    mask = batch["response_mask"].bool()
    lag = (version - batch["rollout_versions"])[mask].double()
    if lag.numel() == 0:
        return {"async/staleness_mean": 0.0, "async/staleness_max": 0.0}
    return {"async/staleness_mean": float(lag.mean()), "async/staleness_max": float(lag.max())}
