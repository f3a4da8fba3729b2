"""ReMax hooks: one greedy response per prompt, scored, is the baseline of that prompt's samples."""

from __future__ import annotations

from typing import Any

from rlkit.data.batch import Batch
from rlkit.trainer.hooks import Hooks


class ReMaxHooks(Hooks):
    def after_generate(self, run: Any, prompts: Batch, batch: Batch) -> Batch:
        greedy = run.generate(prompts, {**run.val_sampling, "n": 1, "temperature": 0.0})
        greedy, _ = run.score(greedy)
        n = len(batch) // len(prompts)
        batch.set("reward_baselines", greedy["seq_score"].repeat_interleave(n))
        return batch


def hooks() -> Hooks:
    return ReMaxHooks()
