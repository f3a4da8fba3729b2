"""The points where a recipe may change the RL step, and their defaults (plain GRPO/PPO).

A recipe that needs code ships a module in ``recipes/`` whose ``hooks()`` returns a :class:`Hooks`
subclass instance (the registry names the module). The trainer core calls these methods and never
asks which recipe is running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from rlkit.data.batch import Batch
from rlkit.errors import UserError

if TYPE_CHECKING:
    from rlkit.config.schema import RlkitConfig


class Hooks:
    """Default behaviour: one generation round per step, keep every group, no extra generations."""

    #: whether :meth:`before_update` reads the batch's ``old_log_probs`` (then ``actor.old_log_probs=auto``
    #: runs the old-log-prob pass before the update instead of taking them from the update's forward)
    reads_old_log_probs: bool = False

    def after_generate(self, run: Any, prompts: Batch, batch: Batch) -> Batch:
        """Called on each freshly generated batch (``prompts`` are its N prompts, ``batch`` their N x n
        samples) before scoring; e.g. ReMax adds a greedy baseline."""
        return batch

    def filter_batch(self, batch: Batch) -> Batch:
        """Rows to keep after scoring (e.g. DAPO drops groups whose rewards have no spread)."""
        return batch

    def max_generation_rounds(self, cfg: RlkitConfig) -> int:
        """Most generation rounds per step before :meth:`on_exhausted` (0 = unlimited)."""
        return 1

    def on_exhausted(self, rounds: int, kept: int, wanted: int) -> Batch | None:
        """The filter kept fewer prompts than a step needs within the allowed rounds.

        Returns rows to add to the step's batch (e.g. groups the filter dropped), or None to train on
        what was kept.
        """
        if rounds > 1:
            raise UserError(
                f"after {rounds} generation rounds only {kept} of {wanted} prompts survived the batch filter",
                hint="raise algo.filter_groups.max_num_gen_batches or check that rewards vary within groups",
            )
        return None

    def before_update(self, run: Any, batch: Batch) -> dict[str, float]:
        """Called once per step after the advantages, before the critic and actor updates.

        May rewrite columns of ``batch`` in place (e.g. SPIN replaces ``advantages`` with its pair
        weights); returns metrics for the step (e.g. DAPO's filter counts).
        """
        return {}


def first_prompts(batch: Batch, num_prompts: int) -> Batch:
    """The rows of the batch's first ``num_prompts`` prompts (a prompt's rows are adjacent, one ``uid``)."""
    uids = batch.non_tensors["uid"]
    starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]]) if len(uids) else np.zeros(0, dtype=int)
    end = int(starts[num_prompts]) if len(starts) > num_prompts else len(uids)
    return batch.index(slice(0, end))


def load_hooks(module_name: str | None) -> Hooks:
    """The hooks of a recipe module in ``rlkit.recipes`` (its ``hooks()`` factory), or the defaults."""
    if not module_name:
        return Hooks()
    import importlib

    module = importlib.import_module(f"rlkit.recipes.{module_name}")
    hooks = module.hooks()
    assert isinstance(hooks, Hooks), f"rlkit.recipes.{module_name}.hooks() must return a Hooks instance"
    return hooks
