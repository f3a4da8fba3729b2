"""Learning-rate schedules as multipliers of the base rate (verl's, for ``LambdaLR``).

The step counts RL steps (one ``update`` call), not optimizer steps, as verl does: the scheduler
advances once per training step however many mini-batches that step has. Warmup is linear from 0
(verl and transformers: the first step of a run with warmup trains at lr 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("constant", "cosine")


def lr_multiplier(
    step: int, *, schedule: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> float:
    """The factor applied to the base learning rate at ``step`` (0-based).

    ``constant``: ``min(1, step / warmup)``. ``cosine``: the same warmup, then half a cosine from 1
    down to ``min_lr_ratio`` at ``total_steps`` (verl's ``get_cosine_schedule_with_warmup``).

    Example:
        >>> lr_multiplier(5, schedule="cosine", warmup_steps=0, total_steps=10)
        0.5
    """
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        cos = math.cos(math.pi * progress)
        return max(0.0, (1 - min_lr_ratio) * 0.5 * cos + (1 + min_lr_ratio) * 0.5)
    raise ValueError(f"unknown lr schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


def lr_lambda(
    *, schedule: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> Callable[[int], float]:
    """A ``LambdaLR`` function for the schedule; validates the arguments once, up front."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"warmup_steps ({warmup_steps}) and total_steps ({total_steps}) must be >= 0")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def fn(step: int) -> float:
        return lr_multiplier(
            step,
            schedule=schedule,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_lr_ratio=min_lr_ratio,
        )

    return fn
