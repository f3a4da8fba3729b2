"""Built-in rule scorers and verl's ``default_compute_score`` routing by ``data_source``.

Every scorer is pure Python (no torch), so scoring worker processes start fast and stay small.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlkit.errors import UserError
from rlkit.rewards.scorers import arith, arith_tools, countdown, gsm8k, math

#: ``data_source`` value -> scorer ``fn(solution_str, ground_truth) -> float | dict``.
SCORERS: dict[str, Callable[..., float | dict[str, Any]]] = {
    "openai/gsm8k": gsm8k.compute_score,
    "lighteval/MATH": math.compute_score,
    "DigitalLearningGmbH/MATH-lighteval": math.compute_score,
    "HuggingFaceH4/MATH-500": math.compute_score,
    "math": math.compute_score,
    "countdown": countdown.compute_score,
    "arith": arith.compute_score,
    "arith_tools": arith_tools.compute_score,
}


def check_data_sources(data_sources: list[str] | set[str]) -> None:
    """Raise :class:`UserError` naming the first ``data_source`` no built-in scorer handles.

    Managers call this in the trainer process before scoring, so an unknown source stops the run
    with one clear line instead of silently scoring 0 inside a worker.
    """
    for source in sorted(set(data_sources)):
        if source not in SCORERS:
            raise UserError(
                f"no built-in scorer for data_source {source!r} (known: {', '.join(SCORERS)})",
                hint="score it with your own function: reward.custom.path=FILE.py reward.custom.name=FN",
            )


def default_compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> float | dict[str, Any]:
    """Score one response with the built-in scorer of its ``data_source`` (verl's signature).

    Args:
        data_source: Selects the scorer: ``openai/gsm8k``; ``lighteval/MATH``,
            ``DigitalLearningGmbH/MATH-lighteval``, ``HuggingFaceH4/MATH-500``, ``math``;
            ``countdown``; ``arith``; ``arith_tools``.
        solution_str: The decoded response.
        ground_truth: The row's ``reward_model.ground_truth``.
        extra_info: The row's ``extra_info`` (unused by the built-in scorers).
        **kwargs: verl's extra keywords (``sandbox_fusion_url``, ...); ignored.

    Returns:
        A float, or a dict with a ``score`` key and extra information (``acc``, ``pred``).

    Raises:
        UserError: No built-in scorer handles ``data_source``.

    Example:
        >>> default_compute_score("openai/gsm8k", "so #### 42", "42")
        1.0
        >>> default_compute_score("arith", "2 + 3 = 5", "5")["score"]
        1.0
    """
    scorer = SCORERS.get(data_source)
    if scorer is None:
        check_data_sources([data_source])
    assert scorer is not None
    return scorer(solution_str, ground_truth)


__all__ = [
    "SCORERS",
    "check_data_sources",
    "default_compute_score",
    "arith",
    "arith_tools",
    "countdown",
    "gsm8k",
    "math",
]
