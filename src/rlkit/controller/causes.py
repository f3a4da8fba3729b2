"""The real cause of an exception raised in a worker, as one line a user can act on.

Role code fails through layers: torch's distributed checkpointing wraps every rank's error in a
``CheckpointException`` (a ``BaseException``, with a ``failures`` dict of per-rank errors), and
libraries chain their own errors (``raise ... from``). :func:`root_cause` walks those layers to
the error that says what is wrong (an ``OSError`` with its errno and file name, a
:class:`~rlkit.errors.UserError`, or else the innermost exception), and :func:`describe` turns it
into one line.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

from rlkit.errors import UserError

# errno -> what it means for the user, named in the one line.
_OS_CAUSES: dict[int, str] = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.EIO: "input/output error",
}
# How deep a chain is followed (a guard against cycles the ``seen`` set would not catch).
_MAX_DEPTH = 32


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception inside it: causes, contexts and CheckpointException failures."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < _MAX_DEPTH:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        failures = getattr(current, "failures", None)
        if isinstance(failures, dict):
            for item in failures.values():
                inner = item[0] if isinstance(item, tuple) and item else item
                if isinstance(inner, BaseException):
                    todo.append(inner)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)


def root_cause(exc: BaseException) -> BaseException:
    """The exception in ``exc``'s chain that names the problem best.

    A :class:`UserError` wins (it was written for the user), then an ``OSError`` with a known errno
    (disk full, permission denied, ...), then any ``OSError`` with a file name, then the innermost
    exception of the chain.
    """
    links = list(chain(exc))
    tests: tuple[Callable[[BaseException], bool], ...] = (
        lambda e: isinstance(e, UserError),
        lambda e: isinstance(e, OSError) and e.errno in _OS_CAUSES,
        lambda e: isinstance(e, OSError) and e.filename is not None,
    )
    for test in tests:
        found = next((e for e in links if test(e)), None)
        if found is not None:
            return found
    plain = [e for e in links if getattr(e, "failures", None) is None]
    return plain[-1] if plain else exc


def describe(exc: BaseException) -> str:
    """One line for ``exc``'s root cause: ``disk full: /run/x`` or ``ValueError: bad input``."""
    cause = root_cause(exc)
    if isinstance(cause, UserError):
        return cause.message + (f" — {cause.hint}" if cause.hint else "")
    if isinstance(cause, OSError) and (cause.errno in _OS_CAUSES or cause.filename):
        what = _OS_CAUSES.get(cause.errno or -1) or cause.strerror or type(cause).__name__
        where = f": {cause.filename}" if cause.filename else ""
        if cause.filename2:
            where += f" -> {cause.filename2}"
        return f"{what}{where} ({type(cause).__name__} errno {cause.errno})"
    return f"{type(cause).__name__}: {first_line(cause)}"


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``str(exc)``, or the type name when there is none."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
