"""Which prompts each RL step sees: seeded per-epoch shuffles, resumable mid-epoch.

The order of epoch ``e`` depends only on ``(seed, e)``, so a run resumed from a checkpoint's
``state_dict()`` sees exactly the batches the uninterrupted run would have seen, across epoch
boundaries too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from rlkit.errors import UserError


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``torch.Generator`` mixing the run's seed and the epoch.

    ``SeedSequence`` hashes the pair, so nearby seeds or epochs give unrelated orders (a plain
    ``seed + epoch`` would make run seed 1 epoch 1 replay run seed 2 epoch 0).
    """
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class PromptSampler:
    """Index batches over a dataset, epoch after epoch, forever.

    Args:
        num_items: Dataset size.
        batch_size: Indices per batch (prompts per RL step).
        seed: Seed of the shuffles (``trainer.seed``).
        shuffle: Shuffle each epoch; otherwise every epoch is ``0..num_items-1`` in order.
        drop_last: Drop an epoch's final batch when it is short (every batch then has ``batch_size``).

    Raises:
        UserError: ``batch_size`` < 1, or larger than the dataset with ``drop_last``.
    """

    def __init__(
        self, num_items: int, batch_size: int, *, seed: int, shuffle: bool = True, drop_last: bool = True
    ):
        if batch_size < 1:
            raise UserError(f"data.batch_size must be at least 1, got {batch_size}")
        if num_items < 1 or (drop_last and batch_size > num_items):
            raise UserError(
                f"data.batch_size={batch_size} prompts per step, but the dataset has only {num_items}",
                hint="lower data.batch_size or use more data",
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # batches already taken from the current epoch
        self._order: torch.Tensor | None = None

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_items, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            if self.shuffle:
                generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
                self._order = torch.randperm(self.num_items, generator=generator)
            else:
                self._order = torch.arange(self.num_items)
        return self._order

    def next_batch(self) -> list[int]:
        """The next batch of dataset indices (moving to a new epoch when this one is used up)."""
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._order = None
        start = self.position * self.batch_size
        batch = self._epoch_order()[start : start + self.batch_size].tolist()
        self.position += 1
        return batch

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue with exactly the same batches."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_items": self.num_items,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``.

        Raises:
            UserError: The state belongs to a sampler over other data or with other settings
                (resuming would then silently see different prompts).
        """
        for key in ("seed", "num_items", "batch_size", "shuffle", "drop_last"):
            if state.get(key) != getattr(self, key):
                raise UserError(
                    f"cannot resume the prompt order: the checkpoint has {key}={state.get(key)!r}, "
                    f"this run has {getattr(self, key)!r}",
                    hint="resume with the same data files, data.batch_size, data.shuffle and trainer.seed",
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = None
