"""Reward managers: responses and ground truths in, a score per response out (verl's managers).

Managers take plain Python lists (the trainer decodes its batch) and return a
:class:`RewardOutput`. ``naive`` scores one response per call of a verl-style
``compute_score``; ``batch`` hands a whole list to a user's batched function; ``dapo`` is
``naive`` plus DAPO's overlong reward shaping. Scoring runs in a :class:`~rlkit.rewards.pool.ScoringPool`,
so a failing or hanging scorer costs a 0, a count in ``reward/errors`` or ``reward/timeouts``
(and ``reward/errors_<kind>``) and one console line for the step, never the step itself; with
``on_error="raise"`` the first failure stops the run instead (:mod:`rlkit.rewards.outcomes`).

Shape legend: ``B`` responses in the batch, ``R`` response tokens (padded).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from rlkit.errors import UserError
from rlkit.rewards.custom import load_custom_reward
from rlkit.rewards.outcomes import Failure, Tally, assemble, check_on_error, error_metrics, report, warn
from rlkit.rewards.pool import OK, ScoringPool
from rlkit.rewards.scorers import check_data_sources, default_compute_score


@dataclass
class RewardOutput:
    """Scores of a batch of responses.

    Attributes:
        scores: One score per response, float32, shape ``(B,)``.
        extra: The other keys of dict results, each a list aligned with the batch (None where a
            response's result lacks the key).
        metrics: ``reward/errors``, ``reward/timeouts``, ``reward/errors_<kind>`` per failure kind
            that occurred (counts; :data:`rlkit.rewards.outcomes.KINDS`), ``reward/worker_restarts``
            and manager-specific means.
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


def _output(tally: Tally, restarts: int, data_sources: Sequence[str], on_error: str) -> RewardOutput:
    """Report the failures (a console line, or a UserError with ``raise``) and package the scores."""
    report(tally.failures, len(tally.scores), data_sources, on_error)
    keys = list(dict.fromkeys(key for extra in tally.extras for key in extra))
    aligned = {key: [extra.get(key) for extra in tally.extras] for key in keys}
    metrics = {**error_metrics(tally.failures), "reward/worker_restarts": float(restarts)}
    return RewardOutput(
        scores=torch.tensor(tally.scores, dtype=torch.float32), extra=aligned, metrics=metrics
    )


def default_custom_workers() -> int:
    """Scoring processes for a user's function when ``reward.num_workers`` is 0: up to 4, one per core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


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
        step_timeout_s: Seconds one batch's scoring may take (worker processes only; None: no cap).
        import_timeout_s: Seconds a worker may take to import a custom function.
        on_error: ``zero`` (a failed sample scores 0, is counted and reported in one console line)
            or ``raise`` (the first failure stops the run with a UserError).

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
        step_timeout_s: float | None = None,
        import_timeout_s: float = 60.0,
        on_error: str = "zero",
    ) -> None:
        check_on_error(on_error)
        fn = compute_score or default_compute_score
        self._checks_sources = fn is default_compute_score
        self.on_error = on_error
        if reward_kwargs:
            fn = functools.partial(fn, **reward_kwargs)
        self.pool = ScoringPool(
            fn,
            num_workers=num_workers,
            timeout_s=timeout_s,
            memory_limit_mb=memory_limit_mb,
            cpu_limit_s=cpu_limit_s,
            step_timeout_s=step_timeout_s,
            import_timeout_s=import_timeout_s,
            notify=warn,
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
        return _output(assemble(result.values, result.failures), result.restarts, data_sources, self.on_error)

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
        step_timeout_s, import_timeout_s, on_error: As :class:`NaiveRewardManager`.
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
        step_timeout_s: float | None = None,
        import_timeout_s: float = 60.0,
        on_error: str = "zero",
    ) -> None:
        check_on_error(on_error)
        fn: Callable[..., Any] = compute_score
        if reward_kwargs:
            fn = functools.partial(fn, **reward_kwargs)
        self.timeout_s = timeout_s
        self.on_error = on_error
        self.pool = ScoringPool(
            fn,
            num_workers=num_workers,
            timeout_s=timeout_s,
            memory_limit_mb=memory_limit_mb,
            cpu_limit_s=cpu_limit_s,
            chunk_size=1,
            step_timeout_s=step_timeout_s,
            import_timeout_s=import_timeout_s,
            notify=warn,
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
        failures: list[Failure] = []
        for (a, b), status, kind, detail, value in zip(
            bounds, result.status, result.kinds, result.details, result.values, strict=True
        ):
            if status == OK and isinstance(value, list) and len(value) == b - a:
                values[a:b] = value
                continue
            if status == OK:
                got = f"a list of {len(value)}" if isinstance(value, list) else f"a {type(value).__name__}"
                kind, detail = "bad_batch", f"was in a part of {b - a} samples that got {got} back"
            failures += [Failure(i, kind or "raised", detail) for i in range(a, b)]
        return _output(assemble(values, failures), result.restarts, data_sources, self.on_error)

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
            ``reward_kwargs``, ``step_timeout_s``, ``import_timeout_s``, ``on_error`` as
            :class:`NaiveRewardManager`.
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
        self.pool = self.naive.pool
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
    step_timeout_s: float | None = 600.0,
    import_timeout_s: float = 60.0,
    on_error: str = "zero",
    reward_model_path: str | None = None,
) -> RewardManager:
    """Build a manager from plain settings (``reward.*`` of the config), its workers ready.

    A custom function (``custom_path``) always runs in worker processes: with ``num_workers=0`` it
    gets :func:`default_custom_workers`, since user code must not run in the trainer. The workers
    import the file before this returns, so a file that raises, exits or hangs at import is
    reported here, before the first step. ``reward_model_path`` (``reward.model_path``, scored by a
    worker role, not by this manager) is checked here too, so that a checkpoint with only pickled
    weights is refused before any worker starts.

    Raises:
        UserError: Unknown manager or ``on_error``, ``batch`` without a custom function, or a bad
            custom file (found by parsing it, or when the workers import it).
    """
    if manager not in reward_managers:
        raise UserError(
            f"reward.manager: unknown manager {manager!r} (known: {', '.join(reward_managers)})",
            hint="set reward.manager to one of them",
        )
    check_on_error(on_error)
    if reward_model_path:
        from pathlib import Path

        from rlkit.data.hub import resolve_model_path
        from rlkit.rewards.reward_model import refuse_pickled_weights  # transformers: only when needed

        # a Hub id is fetched into the cache once here, on the driver, before any worker starts
        refuse_pickled_weights(Path(resolve_model_path(reward_model_path, key="reward.model_path")))
    fn = None
    if custom_path:
        fn = load_custom_reward(custom_path, custom_name, batched=manager == "batch")
        num_workers = num_workers or default_custom_workers()
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
        "step_timeout_s": step_timeout_s,
        "import_timeout_s": import_timeout_s,
        "on_error": on_error,
    }
    built: NaiveRewardManager | BatchRewardManager | DAPORewardManager
    if manager == "batch":
        assert fn is not None
        built = BatchRewardManager(fn, **settings)
    elif manager == "dapo":
        built = DAPORewardManager(
            fn,
            overlong_enable=overlong_enable,
            overlong_buffer_len=overlong_buffer_len,
            overlong_penalty_factor=overlong_penalty_factor,
            **settings,
        )
    else:
        built = NaiveRewardManager(fn, **settings)
    built.pool.wait_ready()
    return built


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
