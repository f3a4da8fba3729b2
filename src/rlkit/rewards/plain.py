"""Plain data: the only thing a scoring process may send back to the trainer.

A scoring process runs user code on model output, so the trainer never unpickles anything it
sends. The process turns each result into plain data *itself* (:func:`to_plain`: numbers, bools,
strings, None, and lists / string-keyed dicts of those, at most :data:`MAX_DEPTH` deep) and sends
the JSON text of it as bytes; the trainer only ``json.loads`` those bytes and checks their shape
(:func:`check_plain`, :func:`parse_message`). Sizes are bounded on both sides.

Example:
    >>> to_plain({"score": 1, "tags": ("a", True)})
    {'score': 1, 'tags': ['a', True]}
    >>> check_plain(json.loads(encode({"score": float("nan")})))["score"]
    nan
"""

from __future__ import annotations

import json
import numbers
import os
import re
import traceback
from collections.abc import Mapping
from typing import Any

#: Largest JSON encoding of one result, in bytes; a larger result is an error (``too_large``).
MAX_RESULT_BYTES = 64 * 1024
#: Deepest nesting of lists and dicts inside one result.
MAX_DEPTH = 4
#: Longest failure description that crosses back, in characters.
MAX_MESSAGE_CHARS = 400
#: Room for a message's envelope on top of its results.
ENVELOPE_BYTES = 4096


_EXACT = (type(None), bool, int, float, str)
# One encoder for all calls (json.dumps with arguments builds a new one each time).
_ENCODER = json.JSONEncoder(allow_nan=True, separators=(",", ":"))


class NotPlainError(ValueError):
    """A value that is not plain data (or is too deep or too large)."""


class TooLargeError(NotPlainError):
    """Plain data whose JSON is longer than :data:`MAX_RESULT_BYTES`."""


def describe(exc: BaseException) -> str:
    """``Type: message (file:line)``: the exception's last line and innermost frame, one line.

    Runs wherever the exception was raised (in a scoring process, on user objects), and never
    raises itself.
    """
    try:
        lines = traceback.format_exception_only(type(exc), exc)
        text = " ".join(lines[-1].split()) if lines else type(exc).__name__
    except Exception:  # a user exception whose __str__ raises
        text = type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return text[:MAX_MESSAGE_CHARS] + where


def to_plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain data; runs in the scoring process, on whatever the user's code returned.

    numpy / torch scalars and arrays become numbers and lists (through ``item``/``tolist``),
    tuples become lists, mapping keys must be strings.

    Raises:
        NotPlainError: Anything else (an object of a class from the reward file, bytes, a set, a
            dict with a non-string key) or nesting deeper than :data:`MAX_DEPTH`.
    """
    if type(value) in _EXACT:  # the common case, without the slower ABC checks below
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if depth >= MAX_DEPTH:
        raise NotPlainError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotPlainError(f"a dict with a {type(key).__name__} key ({type(value).__name__})")
            out[str(key)] = to_plain(item, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [to_plain(item, depth + 1) for item in value]
    convert = getattr(value, "tolist", None) or getattr(value, "item", None)
    if callable(convert) and type(value).__module__.split(".")[0] in ("numpy", "torch"):
        return to_plain(convert(), depth + 1)
    raise NotPlainError(
        f"an object of type {type(value).__qualname__} (not plain data: numbers, strings, lists, dicts)"
    )


def encode(value: Any) -> str:
    """The JSON text of a plain ``value`` (NaN and inf kept, so that they can be reported).

    Raises:
        TooLargeError: The text is longer than :data:`MAX_RESULT_BYTES`.
    """
    text = _ENCODER.encode(value)
    if len(text) > MAX_RESULT_BYTES:  # characters <= bytes; the parent bounds the bytes again
        raise TooLargeError(f"{len(text)} bytes of JSON (at most {MAX_RESULT_BYTES})")
    return text


def check_plain(value: Any, depth: int = 0) -> Any:
    """Return ``value`` (decoded JSON) if it is plain data within :data:`MAX_DEPTH`; runs in the trainer.

    Raises:
        NotPlainError: Too deep, or a container other than a list or a string-keyed dict.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth >= MAX_DEPTH:
        raise NotPlainError("nested too deep")
    if isinstance(value, list):
        for item in value:
            check_plain(item, depth + 1)
        return value
    if isinstance(value, dict):
        for item in value.values():
            check_plain(item, depth + 1)
        return value
    raise NotPlainError(f"unexpected {type(value).__name__}")


def parse_message(data: bytes) -> dict[str, Any]:
    """Decode one message from a scoring process: a JSON object with a string ``kind``.

    Raises:
        NotPlainError: Not UTF-8, not JSON, too deep for the decoder, or not such an object.
    """
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise NotPlainError(f"not a JSON message: {type(exc).__name__}") from None
    if not isinstance(message, dict) or not isinstance(message.get("kind"), str):
        raise NotPlainError("not a message object")
    return message


def clip_message(text: Any) -> str:
    """A failure description that came back from a scoring process, as one bounded line."""
    if not isinstance(text, str):
        return "(no description)"
    return re.sub(r"\s+", " ", text).strip()[: MAX_MESSAGE_CHARS + 80]
