"""How a role method's arguments are spread over the ranks of a worker group, and results gathered.

A role method is callable from the controller only when it declares its mode with
:func:`dispatch` (verl's ``@register``, cut down to three modes):

- ``"broadcast"``: every rank gets the same arguments; the result is a list with one entry per rank.
- ``"shard"``: every :class:`~rlkit.data.batch.Batch` argument is padded to a multiple of the world
  size (repeating its first rows) and split into one equal chunk per rank; other arguments are
  broadcast. Batch results are concatenated in rank order and the padding is dropped (their
  ``meta`` merged by :func:`reduce_metrics` with ``keep_equal``); dict results (metrics) are
  reduced with :func:`reduce_metrics`; other results come back as a list, one entry per rank.
  Padding rows are real rows to the method, so metrics averaged over ranks include them.
- ``"rank0"``: every rank gets the arguments (so collectives inside the method work); the
  result is rank 0's.

A method marked :func:`probe` instead takes no arguments and only reads: the controller may call it
while the same worker runs another call (:meth:`~rlkit.controller.group.WorkerGroup.probe`), e.g.
the rollout engine's live gauges while it generates.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Number
from typing import Any, Literal, TypeVar, get_args

import torch

from rlkit.data.batch import Batch, values_equal

DispatchMode = Literal["broadcast", "shard", "rank0"]
MODES: tuple[str, ...] = get_args(DispatchMode)
DISPATCH_ATTR = "__rlkit_dispatch__"
PROBE_ATTR = "__rlkit_probe__"

F = TypeVar("F", bound=Callable[..., Any])


def dispatch(mode: DispatchMode) -> Callable[[F], F]:
    """Mark a role method as callable from the controller with the given dispatch mode.

    Example:
        >>> class Actor:
        ...     @dispatch("shard")
        ...     def compute_log_prob(self, batch: Batch) -> Batch: ...
    """
    if mode not in MODES:
        raise ValueError(f"unknown dispatch mode {mode!r}; use one of {MODES}")

    def mark(fn: F) -> F:
        setattr(fn, DISPATCH_ATTR, mode)
        return fn

    return mark


def probe(fn: F) -> F:
    """Mark a role method as a probe: no arguments, reads state without changing it, answers at once,
    and is safe to run on a second thread while the worker's current call runs."""
    setattr(fn, PROBE_ATTR, True)
    return fn


def is_probe(cls: type, method: str) -> bool:
    """Whether ``cls.method`` is marked with :func:`probe`."""
    return bool(getattr(getattr(cls, method, None), PROBE_ATTR, False))


def dispatch_mode(cls: type, method: str) -> DispatchMode:
    """The mode ``cls.method`` was declared with.

    Raises:
        AttributeError: If there is no such method or it is not decorated with :func:`dispatch`.
    """
    fn = getattr(cls, method, None)
    if fn is None:
        raise AttributeError(f"role class {cls.__name__} has no method {method!r}")
    mode = getattr(fn, DISPATCH_ATTR, None)
    if mode is None:
        raise AttributeError(
            f"{cls.__name__}.{method} is not callable from the controller: decorate it with @dispatch(...)"
        )
    return mode  # type: ignore[no-any-return]


Payload = tuple[tuple[Any, ...], dict[str, Any]]


def shard_payloads(args: tuple[Any, ...], kwargs: dict[str, Any], world: int) -> tuple[list[Payload], int]:
    """Per-rank ``(args, kwargs)`` for a ``"shard"`` call, and the rows of padding added.

    Raises:
        ValueError: If no argument is a Batch, or the Batch arguments differ in length.
    """
    batches = [a for a in (*args, *kwargs.values()) if isinstance(a, Batch)]
    if not batches:
        raise ValueError("a 'shard' method needs at least one Batch argument to split over the ranks")
    lengths = {len(b) for b in batches}
    if len(lengths) > 1:
        raise ValueError(f"the Batch arguments of a 'shard' call differ in length: {sorted(lengths)}")

    pad = 0

    def parts(value: Any) -> list[Any]:
        nonlocal pad
        if not isinstance(value, Batch):
            return [value] * world
        padded, pad = value.pad_to_divisor(world)
        return padded.chunk(world)

    arg_parts = [parts(a) for a in args]
    kwarg_parts = {k: parts(v) for k, v in kwargs.items()}
    payloads = [
        (tuple(p[r] for p in arg_parts), {k: p[r] for k, p in kwarg_parts.items()}) for r in range(world)
    ]
    return payloads, pad


def collect(mode: DispatchMode, results: list[Any], pad: int = 0) -> Any:
    """Combine the per-rank ``results`` of a call made in ``mode`` (see the module docstring)."""
    if mode == "rank0":
        return results[0]
    if mode == "broadcast":
        return results
    if all(isinstance(r, Batch) for r in results):
        merged = Batch.concat([Batch(r.tensors, r.non_tensors) for r in results])
        merged.meta = reduce_metrics([r.meta for r in results], keep_equal=True)
        if pad and len(merged) < pad:
            raise ValueError(f"shard results have {len(merged)} rows, fewer than the {pad} rows of padding")
        return merged.unpad(pad)
    if all(isinstance(r, dict) for r in results):
        return reduce_metrics(results)
    if all(r is None for r in results):
        return None
    return results


def reduce_metrics(dicts: list[dict[str, Any]], *, keep_equal: bool = False) -> dict[str, Any]:
    """Merge per-rank dicts key by key.

    Numbers (and 0-d tensors) are averaged; lists are concatenated in rank order (per-micro-batch
    values); nested dicts are merged the same way; values every rank reports equally are kept;
    anything else becomes a list with one entry per rank that reported the key. With
    ``keep_equal`` (used for Batch ``meta``), equal values are kept before any other rule, so a
    list every rank shares is not repeated.
    """
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for d in dicts for k in d):
        values = [d[key] for d in dicts if key in d]
        equal = all(values_equal(v, values[0]) for v in values[1:])
        if keep_equal and equal:
            out[key] = values[0]
        elif all(_is_number(v) for v in values):
            out[key] = sum(float(v) for v in values) / len(values)
        elif all(isinstance(v, list) for v in values):
            out[key] = [x for v in values for x in v]
        elif all(isinstance(v, dict) for v in values):
            out[key] = reduce_metrics(values, keep_equal=keep_equal)
        elif equal:
            out[key] = values[0]
        else:
            out[key] = values
    return out


def _is_number(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.ndim == 0 and v.dtype != torch.bool
    return isinstance(v, Number) and not isinstance(v, bool)
