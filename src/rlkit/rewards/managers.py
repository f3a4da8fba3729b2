"""Reward managers: responses and ground truths in, a score per response out (verl's managers).

Managers take plain Python lists (the trainer decodes its batch) and return a
:class:`RewardOutput`. ``naive`` scores one response per call of a verl-style
``compute_score``; ``batch`` hands a whole list to a user's batched function; ``dapo`` is
``naive`` plus DAPO's overlong reward shaping. Scoring runs in a :class:`~rlkit.rewards.pool.ScoringPool`,
so a failing or hanging scorer costs a 0 and a count in ``reward/errors`` or ``reward/timeouts``,
never the step.

Shape legend: ``B`` responses in the batch, ``R`` response tokens (padded).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from rlkit.errors import UserError
from rlkit.rewards.custom import load_custom_reward
from rlkit.rewards.pool import OK, ScoringPool
from rlkit.rewards.scorers import check_data_sources, default_compute_score


@dataclass
class RewardOutput:
    """Scores of a batch of responses.

    Attributes:
        scores: One score per response, float32, shape ``(B,)``.
        extra: The other keys of dict results, each a list aligned with the batch (None where a
            response's result lacks the key).
        metrics: ``reward/errors`` and ``reward/timeouts`` (counts) and manager-specific means.
    """

    scores: torch.Tensor
    extra: dict[str, list[Any]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class RewardManager(Protocol):
    """What the trainer calls; see :class:`NaiveRewardManager` for the arguments."""

    def __call__(
        self,
        responses: list[str],
        ground_truths: list[Any],
        data_sources: list[str],
        extra_infos: list[dict[str, Any] | None],
        response_lengths: list[int] | torch.Tensor,
        max_response_length: int,
    ) -> RewardOutput: ...

    def close(self) -> None: ...


def _as_score(value: Any) -> tuple[float, dict[str, Any]] | None:
    """``(score, extra)`` from a float/int/bool or a dict with ``score``; None if invalid or not finite."""
    extra: dict[str, Any] = {}
    if isinstance(value, dict):
        if "score" not in value:
            return None
        extra = {k: v for k, v in value.items() if k != "score"}
        value = value["score"]
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return (score, extra) if math.isfinite(score) else None


def _assemble(values: Sequence[Any], ok: Sequence[bool]) -> tuple[torch.Tensor, dict[str, list[Any]], int]:
    """Scores, aligned extras and the number of invalid results (counted as errors)."""
    scores: list[float] = [0.0] * len(values)
    extras: list[dict[str, Any]] = [{} for _ in values]
    invalid = 0
    for i, (value, good) in enumerate(zip(values, ok, strict=True)):
        parsed = _as_score(value) if good else None
        if parsed is None:
            invalid += int(good)
            continue
        scores[i], extras[i] = parsed
    keys = list(dict.fromkeys(key for extra in extras for key in extra))
    aligned = {key: [extra.get(key) for extra in extras] for key in keys}
    return torch.tensor(scores, dtype=torch.float32), aligned, invalid


def _as_list(value: Any) -> list[Any] | None:
    """A batched function's result as a list (lists, tuples, arrays, tensors); None if not a sequence."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
        return None
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _check_lengths(**columns: Sequence[Any] | torch.Tensor) -> int:
    sizes = {name: len(column) for name, column in columns.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"reward manager inputs differ in length: {sizes}")
    return next(iter(sizes.values()), 0)


class NaiveRewardManager:
    """Scores each response with ``compute_score(data_source, solution_str, ground_truth, extra_info)``.

    Args:
        compute_score: A verl-style per-sample function (None: :func:`default_compute_score`).
        num_workers: Scoring processes (0: in this process; only for trusted functions).
        timeout_s: Per-response timeout (worker processes only).
        memory_limit_mb: Extra address space per worker (None: no cap).
        cpu_limit_s: CPU seconds per response (None: ``timeout_s + 1``).
        reward_kwargs: Extra keywords for every call (verl's ``reward_kwargs``).

    Example:
        >>> manager = NaiveRewardManager()
        >>> out = manager(["#### 4", "#### 5"], ["4", "4"], ["openai/gsm8k"] * 2, [None, None], [3, 3], 16)
        >>> out.scores.tolist(), out.metrics["reward/errors"]
        ([1.0, 0.0], 0.0)
    """

    def __init__(
        self,
        compute_score: Callable[..., Any] | None = None,
        *,
        num_workers: int = 0,
        timeout_s: float = 10.0,
        memory_limit_mb: int | None = 2048,
        cpu_limit_s: float | None = None,
        reward_kwargs: dict[str, Any] | None = None,
    ) -> None:
        fn = compute_score or default_compute_score
        self._checks_sources = fn is default_compute_score
        if reward_kwargs:
            fn = functools.partial(fn, **reward_kwargs)
        self.pool = ScoringPool(
            fn,
            num_workers=num_workers,
            timeout_s=timeout_s,
            memory_limit_mb=memory_limit_mb,
            cpu_limit_s=cpu_limit_s,
        )

    def __call__(
        self,
        responses: list[str],
        ground_truths: list[Any],
        data_sources: list[str],
        extra_infos: list[dict[str, Any] | None],
        response_lengths: list[int] | torch.Tensor,
        max_response_length: int,
    ) -> RewardOutput:
        """Score a batch.

        Args:
            responses: Decoded responses (special tokens skipped).
            ground_truths: Each row's ``reward_model.ground_truth``.
            data_sources: Each row's ``data_source``.
            extra_infos: Each row's ``extra_info`` (or None).
            response_lengths: Valid response tokens per row (used by ``dapo``).
            max_response_length: ``data.max_response_length`` (used by ``dapo``).

        Returns:
            Scores ``(B,)``, extras and metrics.

        Shape:
            response_lengths: ``(B,)``.
        """
        _check_lengths(
            responses=responses,
            ground_truths=ground_truths,
            data_sources=data_sources,
            extra_infos=extra_infos,
            response_lengths=response_lengths,
        )
        if self._checks_sources:
            check_data_sources(set(data_sources))
        calls = [
            {"data_source": s, "solution_str": r, "ground_truth": g, "extra_info": e}
            for s, r, g, e in zip(data_sources, responses, ground_truths, extra_infos, strict=True)
        ]
        result = self.pool.map(calls)
        scores, extra, invalid = _assemble(result.values, [s == OK for s in result.status])
        metrics = {
            "reward/errors": float(result.errors + invalid),
            "reward/timeouts": float(result.timeouts),
            "reward/worker_restarts": float(result.restarts),
        }
        return RewardOutput(scores=scores, extra=extra, metrics=metrics)

    def close(self) -> None:
        """Stop the scoring workers."""
        self.pool.close()

    def __enter__(self) -> NaiveRewardManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BatchRewardManager:
    """Hands whole lists to ``fn(data_sources, solution_strs, ground_truths, extra_infos) -> list``.

    With workers the batch is split into one part per worker; a part's timeout is ``timeout_s``
    times its size, and a part that fails or times out scores 0 for all of its responses (each
    counted).

    Args:
        compute_score: The batched function (keyword-called, as verl's ``BatchRewardManager``).
        num_workers: Scoring processes (0: one call in this process).
        timeout_s: Timeout per response.
        memory_limit_mb: Extra address space per worker (None: no cap).
        cpu_limit_s: CPU seconds per part (None: its timeout + 1).
        reward_kwargs: Extra keywords for every call.
    """

    def __init__(
        self,
        compute_score: Callable[..., Sequence[Any]],
        *,
        num_workers: int = 0,
        timeout_s: float = 10.0,
        memory_limit_mb: int | None = 2048,
        cpu_limit_s: float | None = None,
        reward_kwargs: dict[str, Any] | None = None,
    ) -> None:
        fn: Callable[..., Any] = compute_score
        if reward_kwargs:
            fn = functools.partial(fn, **reward_kwargs)
        self.timeout_s = timeout_s
        self.pool = ScoringPool(
            fn,
            num_workers=num_workers,
            timeout_s=timeout_s,
            memory_limit_mb=memory_limit_mb,
            cpu_limit_s=cpu_limit_s,
            chunk_size=1,
        )

    def __call__(
        self,
        responses: list[str],
        ground_truths: list[Any],
        data_sources: list[str],
        extra_infos: list[dict[str, Any] | None],
        response_lengths: list[int] | torch.Tensor,
        max_response_length: int,
    ) -> RewardOutput:
        """Score a batch; arguments as :meth:`NaiveRewardManager.__call__`."""
        size = _check_lengths(
            responses=responses,
            ground_truths=ground_truths,
            data_sources=data_sources,
            extra_infos=extra_infos,
            response_lengths=response_lengths,
        )
        part = max(1, math.ceil(size / max(1, self.pool.num_workers)))
        bounds = [(i, min(i + part, size)) for i in range(0, size, part)]
        calls = [
            {
                "data_sources": list(data_sources[a:b]),
                "solution_strs": list(responses[a:b]),
                "ground_truths": list(ground_truths[a:b]),
                "extra_infos": list(extra_infos[a:b]),
            }
            for a, b in bounds
        ]
        result = self.pool.map(calls, timeout_s=self.timeout_s * part)
        values: list[Any] = [None] * size
        ok = [False] * size
        errors = timeouts = 0
        for (a, b), status, value in zip(bounds, result.status, result.values, strict=True):
            part_values = _as_list(value) if status == OK else None
            if part_values is not None and len(part_values) == b - a:
                values[a:b], ok[a:b] = part_values, [True] * (b - a)
            elif status == "timeout":
                timeouts += b - a
            else:
                errors += b - a
        scores, extra, invalid = _assemble(values, ok)
        metrics = {
            "reward/errors": float(errors + invalid),
            "reward/timeouts": float(timeouts),
            "reward/worker_restarts": float(result.restarts),
        }
        return RewardOutput(scores=scores, extra=extra, metrics=metrics)

    def close(self) -> None:
        """Stop the scoring workers."""
        self.pool.close()

    def __enter__(self) -> BatchRewardManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def overlong_penalty(
    lengths: Sequence[int] | torch.Tensor,
    max_response_length: int,
    buffer_len: int,
    penalty_factor: float,
) -> torch.Tensor:
    """DAPO's soft overlong penalty: 0 up to ``max - buffer`` tokens, then linear down to ``-factor``.

    ``expected = max_response_length - buffer_len``;
    ``penalty = min(-(length - expected) / buffer_len * penalty_factor, 0)``.

    Args:
        lengths: Valid response tokens per response.
        max_response_length: The response length limit.
        buffer_len: Length of the penalty ramp, ``0 < buffer_len <= max_response_length``.
        penalty_factor: Penalty at ``length == max_response_length``.

    Returns:
        float32 penalties (<= 0).

    Shape:
        lengths: ``(B,)``. Returns ``(B,)``.

    Example:
        >>> overlong_penalty([10, 12, 14, 16], max_response_length=16, buffer_len=4, penalty_factor=1.0).tolist()
        [0.0, 0.0, -0.5, -1.0]
    """
    if not 0 < buffer_len <= max_response_length:
        raise ValueError(f"overlong buffer_len must be in (0, {max_response_length}], got {buffer_len}")
    lengths_B = torch.as_tensor(lengths, dtype=torch.float32)
    expected = max_response_length - buffer_len
    return torch.clamp((expected - lengths_B) / buffer_len * penalty_factor, max=0.0)


class DAPORewardManager:
    """``naive`` scoring plus DAPO's overlong shaping (``reward_manager=dapo`` in verl).

    Adds :func:`overlong_penalty` to each score when ``overlong_enable``, and reports it per
    response in ``extra["overlong_reward"]`` / ``extra["overlong"]`` as verl does.

    Args:
        compute_score: As :class:`NaiveRewardManager`.
        overlong_enable: Apply the penalty.
        overlong_buffer_len: Length of the penalty ramp before ``max_response_length``.
        overlong_penalty_factor: Penalty at the full length.
        **pool_settings: ``num_workers``, ``timeout_s``, ``memory_limit_mb``, ``cpu_limit_s``,
            ``reward_kwargs`` as :class:`NaiveRewardManager`.
    """

    def __init__(
        self,
        compute_score: Callable[..., Any] | None = None,
        *,
        overlong_enable: bool = True,
        overlong_buffer_len: int = 16,
        overlong_penalty_factor: float = 1.0,
        **pool_settings: Any,
    ) -> None:
        self.naive = NaiveRewardManager(compute_score, **pool_settings)
        self.overlong_enable = overlong_enable
        self.overlong_buffer_len = overlong_buffer_len
        self.overlong_penalty_factor = overlong_penalty_factor

    def __call__(
        self,
        responses: list[str],
        ground_truths: list[Any],
        data_sources: list[str],
        extra_infos: list[dict[str, Any] | None],
        response_lengths: list[int] | torch.Tensor,
        max_response_length: int,
    ) -> RewardOutput:
        """Score a batch; arguments as :meth:`NaiveRewardManager.__call__`."""
        out = self.naive(
            responses, ground_truths, data_sources, extra_infos, response_lengths, max_response_length
        )
        if not self.overlong_enable:
            return out
        if not 0 < self.overlong_buffer_len <= max_response_length:
            raise UserError(
                f"reward.overlong.buffer_len={self.overlong_buffer_len} must be in "
                f"(0, data.max_response_length={max_response_length}]",
                hint="lower reward.overlong.buffer_len or raise data.max_response_length",
            )
        penalty_B = overlong_penalty(
            response_lengths, max_response_length, self.overlong_buffer_len, self.overlong_penalty_factor
        )
        out.scores = out.scores + penalty_B
        out.extra["overlong_reward"] = penalty_B.tolist()
        out.extra["overlong"] = (penalty_B < 0).tolist()
        out.metrics["reward/overlong_frac"] = float((penalty_B < 0).float().mean()) if len(penalty_B) else 0.0
        out.metrics["reward/overlong_penalty_mean"] = float(penalty_B.mean()) if len(penalty_B) else 0.0
        return out

    def close(self) -> None:
        """Stop the scoring workers."""
        self.naive.close()

    def __enter__(self) -> DAPORewardManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


#: Manager name (``reward.manager``) -> class.
reward_managers: dict[str, type] = {
    "naive": NaiveRewardManager,
    "batch": BatchRewardManager,
    "dapo": DAPORewardManager,
}


def build_reward_manager(
    manager: str = "naive",
    *,
    custom_path: str | None = None,
    custom_name: str = "compute_score",
    num_workers: int = 0,
    timeout_s: float = 10.0,
    memory_limit_mb: int | None = 2048,
    cpu_limit_s: float | None = None,
    overlong_enable: bool = False,
    overlong_buffer_len: int = 16,
    overlong_penalty_factor: float = 1.0,
    reward_kwargs: dict[str, Any] | None = None,
) -> RewardManager:
    """Build a manager from plain settings (``reward.*`` of the config).

    A custom function (``custom_path``) always runs in worker processes: ``num_workers=0`` is
    raised to 1 for it, since user code must not run in the trainer.

    Raises:
        UserError: Unknown manager, ``batch`` without a custom function, or a bad custom file.
    """
    if manager not in reward_managers:
        raise UserError(
            f"reward.manager: unknown manager {manager!r} (known: {', '.join(reward_managers)})",
            hint="set reward.manager to one of them",
        )
    fn = None
    if custom_path:
        fn = load_custom_reward(custom_path, custom_name, batched=manager == "batch")
        num_workers = max(1, num_workers)
    elif manager == "batch":
        raise UserError(
            "reward.manager=batch needs a batched function",
            hint="set reward.custom.path (and reward.custom.name) to fn(data_sources, solution_strs, "
            "ground_truths, extra_infos) -> list",
        )
    settings: dict[str, Any] = {
        "num_workers": num_workers,
        "timeout_s": timeout_s,
        "memory_limit_mb": memory_limit_mb,
        "cpu_limit_s": cpu_limit_s,
        "reward_kwargs": reward_kwargs,
    }
    if manager == "batch":
        assert fn is not None
        return BatchRewardManager(fn, **settings)
    if manager == "dapo":
        return DAPORewardManager(
            fn,
            overlong_enable=overlong_enable,
            overlong_buffer_len=overlong_buffer_len,
            overlong_penalty_factor=overlong_penalty_factor,
            **settings,
        )
    return NaiveRewardManager(fn, **settings)


def token_level_scores(scores_B: torch.Tensor, response_mask_BR: torch.Tensor) -> torch.Tensor:
    """Put each response's score on its last valid response token (verl's convention).

    Args:
        scores_B: One score per response.
        response_mask_BR: 1 on response tokens, 0 on padding (holes allowed: the last 1 counts).

    Returns:
        Zeros except ``scores_B[b]`` at the last valid token of row ``b``; a row with no valid
        token gets nothing. dtype of ``scores_B``.

    Shape:
        scores_B: ``(B,)``. response_mask_BR: ``(B, R)``. Returns ``(B, R)``.

    Example:
        >>> token_level_scores(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]]))
        tensor([[0., 1., 0.],
                [0., 0., 2.],
                [0., 0., 0.]])
    """
    if scores_B.dim() != 1 or response_mask_BR.dim() != 2 or scores_B.shape[0] != response_mask_BR.shape[0]:
        raise ValueError(f"shapes: scores {tuple(scores_B.shape)}, mask {tuple(response_mask_BR.shape)}")
    out_BR = torch.zeros(response_mask_BR.shape, dtype=scores_B.dtype, device=scores_B.device)
    if response_mask_BR.shape[1] == 0:
        return out_BR
    positions_R = torch.arange(response_mask_BR.shape[1], device=response_mask_BR.device)
    last_B = torch.where(response_mask_BR.bool(), positions_R, -1).max(dim=1).values
    rows_B = torch.nonzero(last_B >= 0).squeeze(1)
    out_BR[rows_B, last_B[rows_B]] = scores_B[rows_B]
    return out_BR
