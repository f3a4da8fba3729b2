"""The points where a recipe may change the RL step, and their defaults (plain GRPO/PPO).

A recipe that needs code ships a module in ``recipes/`` whose ``hooks()`` returns a :class:`Hooks`
subclass instance (the registry names the module). The trainer core calls these methods and never
asks which recipe is running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlkit.data.batch import Batch
from rlkit.errors import UserError

if TYPE_CHECKING:
    from rlkit.config.schema import RlkitConfig


class Hooks:
    """Default behaviour: one generation round per step, keep every group, no extra generations."""

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

    def on_exhausted(self, rounds: int, kept: int, wanted: int) -> None:
        """The filter kept fewer prompts than a step needs within the allowed rounds."""
        if rounds > 1:
            raise UserError(
                f"after {rounds} generation rounds only {kept} of {wanted} prompts survived the batch filter",
                hint="raise algo.filter_groups.max_num_gen_batches or check that rewards vary within groups",
            )


def load_hooks(module_name: str | None) -> Hooks:
    """The hooks of a recipe module in ``rlkit.recipes`` (its ``hooks()`` factory), or the defaults."""
    if not module_name:
        return Hooks()
    import importlib

    module = importlib.import_module(f"rlkit.recipes.{module_name}")
    hooks = module.hooks()
    assert isinstance(hooks, Hooks), f"rlkit.recipes.{module_name}.hooks() must return a Hooks instance"
    return hooks
