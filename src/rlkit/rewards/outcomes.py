"""What came back for each sample: a score, or one kind of failure, counted and reported per step.

verl's contract: a scoring function returns a finite float/int/bool, or a dict with a ``"score"``
key (its other keys are extra information). Everything else is an error of one *kind* (below),
never a silent 0: :func:`tally` counts the kinds into ``reward/errors*`` metrics, prints one line
on the console when any sample failed, and with ``reward.on_error=raise`` stops the run with one
line naming the data source, the sample index and what came back.

Example:
    >>> classify(True), classify({"score": 2, "acc": 1}), classify(float("nan")), classify("1")
    ((1.0, {}), (2.0, {'acc': 1}), ('nan', 'NaN'), ('string', "'1'"))
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlkit.errors import UserError

#: Failure kind -> how the console line says it ("2 returned NaN, 1 timed out").
KINDS: dict[str, str] = {
    "raised": "raised an exception",
    "not_plain": "returned an object that is not plain data",
    "too_large": "returned a result too large to send back",
    "crashed": "crashed their scoring process",
    "malformed": "got a malformed reply from their scoring process",
    "timeout": "timed out",
    "step_timeout": "were not scored within reward.step_timeout_s",
    "nan": "returned NaN",
    "inf": "returned inf",
    "string": "returned a string",
    "not_a_number": "returned something that is not a number",
    "no_score": "returned a dict without 'score'",
    "bad_batch": "were in a batched result that is not a list of the batch's length",
}
#: Kinds counted in ``reward/timeouts`` (the rest count in ``reward/errors``).
TIMEOUT_KINDS = ("timeout", "step_timeout")
ON_ERROR = ("zero", "raise")
_HINT = "fix the scoring function, or set reward.on_error=zero to score such samples 0 and go on"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def classify(value: Any) -> tuple[float, dict[str, Any]] | tuple[str, str]:
    """``(score, extra)`` for a valid result, else ``(kind, what came back)``.

    Args:
        value: A plain result (see :mod:`rlkit.rewards.plain`).
    """
    extra: dict[str, Any] = {}
    if isinstance(value, dict):
        if "score" not in value:
            return "no_score", _short(sorted(value)[:8])
        extra = {k: v for k, v in value.items() if k != "score"}
        value = value["score"]
    if isinstance(value, str):
        return "string", _short(value)
    if not isinstance(value, (bool, int, float)):
        return "not_a_number", _short(value)
    score = float(value)
    if math.isnan(score):
        return "nan", "NaN"
    if math.isinf(score):
        return "inf", _short(score)
    return score, extra


@dataclass
class Failure:
    """One sample that got no score: its index, kind (a key of :data:`KINDS`) and details."""

    index: int
    kind: str
    detail: str = ""


@dataclass
class Tally:
    """Scores (0.0 where a sample failed), aligned extras and the failures of one batch."""

    scores: list[float]
    extras: list[dict[str, Any]]
    failures: list[Failure] = field(default_factory=list)


def assemble(values: Sequence[Any], failures: Sequence[Failure]) -> Tally:
    """Classify the values of the samples that did not already fail (``failures``)."""
    failed = {f.index for f in failures}
    tally = Tally([0.0] * len(values), [{} for _ in values], list(failures))
    for i, value in enumerate(values):
        if i in failed:
            continue
        parsed = classify(value)
        if isinstance(parsed[0], str):
            tally.failures.append(Failure(i, parsed[0], f"returned {parsed[1]}"))
        else:
            tally.scores[i], tally.extras[i] = parsed
    tally.failures.sort(key=lambda f: f.index)
    return tally


def error_metrics(failures: Sequence[Failure]) -> dict[str, float]:
    """``reward/errors``, ``reward/timeouts`` and one ``reward/errors_<kind>`` per kind that occurred."""
    counts = Counter(f.kind for f in failures)
    timeouts = sum(counts[k] for k in TIMEOUT_KINDS)
    metrics = {"reward/errors": float(len(failures) - timeouts), "reward/timeouts": float(timeouts)}
    metrics.update({f"reward/errors_{kind}": float(n) for kind, n in sorted(counts.items())})
    return metrics


def summary_line(failures: Sequence[Failure], total: int, data_sources: Sequence[str]) -> str:
    """``reward: 3 of 64 samples failed (2 returned NaN, 1 timed out); first: sample 5 ...``."""
    counts = Counter(f.kind for f in failures)
    kinds = ", ".join(f"{n} {KINDS.get(kind, kind)}" for kind, n in counts.most_common())
    return f"reward: {len(failures)} of {total} samples failed ({kinds}); first: {describe_failure(failures[0], data_sources)}"


def describe_failure(failure: Failure, data_sources: Sequence[str]) -> str:
    """``sample 5 (data_source 'x') returned NaN``."""
    source = data_sources[failure.index] if failure.index < len(data_sources) else "?"
    detail = failure.detail or KINDS.get(failure.kind, failure.kind)
    return f"sample {failure.index} (data_source {source!r}) {detail}"


def report(failures: Sequence[Failure], total: int, data_sources: Sequence[str], on_error: str) -> None:
    """Print the step's line on stderr when any sample failed; with ``raise``, stop the run instead.

    Raises:
        UserError: ``on_error == "raise"`` and a sample failed (the first one is named).
    """
    if not failures:
        return
    if on_error == "raise":
        raise UserError(
            f"reward.on_error=raise: {describe_failure(failures[0], data_sources)}"
            + (f" ({len(failures) - 1} more samples failed)" if len(failures) > 1 else ""),
            hint=_HINT,
        )
    warn(summary_line(failures, total, data_sources))


def warn(line: str) -> None:
    """Print one yellow line on stderr (the trainer's console), outside the metrics."""
    from rich.console import Console  # here: scoring processes import this module too

    Console(stderr=True, soft_wrap=True, highlight=False).print(line, style="yellow", markup=False)


def check_on_error(on_error: str) -> None:
    """Raises UserError for a ``reward.on_error`` other than ``zero`` or ``raise``."""
    if on_error not in ON_ERROR:
        raise UserError(
            f"reward.on_error: unknown value {on_error!r}", hint="set reward.on_error to zero or raise"
        )
