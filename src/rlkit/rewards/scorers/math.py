r"""MATH scorer: the last ``\boxed{}`` of a response, normalised and compared to the ground truth.

Follows verl's ``math_reward`` semantics (last ``\boxed{...}`` with brace matching, also
``\boxed 5`` and ``\fbox{...}``; the normalisation rules of its ``strip_string``), written anew,
and adds an exact numeric comparison so that ``0.5``, ``.5``, ``1/2``, ``\dfrac12`` and
``\frac{1}{2}`` are all equal, as are ``1,000`` and ``1000``.
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_TEXT_COMMANDS = ("\\text", "\\textbf", "\\textrm", "\\mbox", "\\mathrm")
_DEGREES = ("^{\\circ}", "^\\circ", "°", "\\degree")
_SPACING = ("\\!", "\\,", "\\;", "\\:", "\\displaystyle")
_DECIMAL = re.compile(r"-?\d+(\.\d+)?")
_FRAC_NUMBER = re.compile(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}")
_SLASH_FRACTION = re.compile(r"(-?\d+)/(-?\d+)")
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")
_LEADING_POINT = re.compile(r"(^|[^\d])\.(\d)")
_SQRT_BARE = re.compile(r"\\sqrt(?![\{\[])(\\[a-zA-Z]+|.)")
_CONTROL_WORD = re.compile(r"\\[a-zA-Z]+")
# A numeric comparison of longer strings is pointless and Fraction of huge digit strings is slow.
_MAX_NUMERIC_CHARS = 100


def _brace_group_end(text: str, open_index: int) -> int | None:
    """Index just past the ``}`` that closes the ``{`` at ``open_index``, or None if unbalanced."""
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def last_boxed_only_string(text: str) -> str | None:
    r"""The last ``\boxed{...}``, ``\fbox{...}`` or ``\boxed ...`` of ``text``, command included.

    Args:
        text: A response.

    Returns:
        The boxed substring, or None when there is none or its braces never close.

    Example:
        >>> last_boxed_only_string(r"first \boxed{1}, then \boxed{\frac{1}{2}}.")
        '\\boxed{\\frac{1}{2}}'
        >>> last_boxed_only_string(r"so $\boxed 7$")
        '\\boxed 7'
        >>> last_boxed_only_string("no box") is None
        True
    """
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    after = start + len(command)
    brace = after
    while brace < len(text) and text[brace] == " ":
        brace += 1
    if brace < len(text) and text[brace] == "{":
        end = _brace_group_end(text, brace)
        return None if end is None else text[start:end]
    if after < len(text) and text[after] == " ":
        # `\boxed 7`: the argument runs to the closing `$` (verl's convention).
        return command + " " + text[after + 1 :].split("$")[0].strip()
    return None


def remove_boxed(boxed: str) -> str:
    r"""The argument of a boxed string returned by :func:`last_boxed_only_string`.

    Example:
        >>> remove_boxed(r"\boxed{\frac{1}{2}}")
        '\\frac{1}{2}'
        >>> remove_boxed(r"\boxed 7")
        '7'
    """
    command = next((c for c in _BOX_COMMANDS if boxed.startswith(c)), None)
    if command is None:
        raise ValueError(f"not a boxed string: {boxed[:50]!r}")
    body = boxed[len(command) :].lstrip(" ")
    if body.startswith("{") and body.endswith("}"):
        return body[1:-1]
    return body


def _unwrap_text(text: str) -> str:
    r"""Drop trailing ``\text{unit}`` groups after a value, then unwrap any other ``\text{X}`` to X."""
    while True:
        match = None
        for command in _TEXT_COMMANDS:
            index = text.rfind(command + "{")
            if index > 0 and (match is None or index > match[0]):
                match = (index, command)
        if match is None:
            break
        index, command = match
        end = _brace_group_end(text, index + len(command))
        if end is None:
            break
        suffix = text[end:].strip()
        # A unit sits at the very end, possibly squared ("5 \text{ m}^2").
        if re.fullmatch(r"(\^\{?\d\}?)?", suffix) and text[:index].strip():
            text = text[:index].rstrip()
            continue
        break
    for command in _TEXT_COMMANDS:
        pattern = re.escape(command) + r"\{([^{}]*)\}"
        text = re.sub(pattern, lambda m: m.group(1), text)
    return text


def _read_argument(text: str, index: int) -> tuple[str, int] | None:
    """One TeX macro argument at ``index``: a brace group, a control word or a single character."""
    if index >= len(text):
        return None
    if text[index] == "{":
        end = _brace_group_end(text, index)
        return None if end is None else (text[index + 1 : end - 1], end)
    word = _CONTROL_WORD.match(text, index)
    if word:
        return word.group(0), word.end()
    return text[index], index + 1


def _fix_fracs(text: str) -> str:
    r"""Brace every ``\frac`` argument: ``\frac12`` and ``\frac1{2}`` become ``\frac{1}{2}``."""
    out: list[str] = []
    index = 0
    while True:
        found = text.find("\\frac", index)
        if found < 0:
            out.append(text[index:])
            return "".join(out)
        out.append(text[index : found + 5])
        numerator = _read_argument(text, found + 5)
        denominator = None if numerator is None else _read_argument(text, numerator[1])
        if numerator is None or denominator is None:
            out.append(text[found + 5 :])
            return "".join(out)
        out.append("{" + numerator[0] + "}{" + denominator[0] + "}")
        index = denominator[1]


def normalize_answer(answer: str) -> str:
    r"""Canonical form of a MATH answer (verl's ``strip_string`` rules plus thousands separators).

    Example:
        >>> normalize_answer(r"\dfrac12")
        '\\frac{1}{2}'
        >>> normalize_answer(r"x = 1/2")
        '\\frac{1}{2}'
        >>> normalize_answer(r"10\text{ cm}")
        '10'
        >>> normalize_answer(r"90^\circ")
        '90'
        >>> normalize_answer("1,000")
        '1000'
    """
    text = answer.strip().replace("\n", "")
    for spacing in _SPACING:
        text = text.replace(spacing, "")
    text = text.replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    for degree in _DEGREES:
        text = text.replace(degree, "")
    text = text.replace("\\$", "").replace("$", "")
    text = _unwrap_text(text)
    text = text.replace("\\%", "").replace("%", "").replace("{,}", "")
    text = _LEADING_POINT.sub(r"\g<1>0.\2", text)
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0].strip()) <= 2:
        text = sides[1]
    text = text.replace(" ", "")
    text = _SQRT_BARE.sub(lambda m: "\\sqrt{" + m.group(1) + "}", text)
    text = _fix_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    slash = _SLASH_FRACTION.fullmatch(text)
    if slash:
        text = "\\frac{" + slash.group(1) + "}{" + slash.group(2) + "}"
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    return text


def _as_number(text: str) -> Fraction | None:
    """The exact value of a normalised integer, decimal or numeric fraction; None otherwise."""
    if len(text) > _MAX_NUMERIC_CHARS:
        return None
    try:
        if _DECIMAL.fullmatch(text):
            return Fraction(text)
        frac = _FRAC_NUMBER.fullmatch(text)
        if frac:
            denominator = Fraction(frac.group(3))
            if denominator == 0:
                return None
            value = Fraction(frac.group(2)) / denominator
            return -value if frac.group(1) else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def is_equiv(answer: str, ground_truth: str) -> bool:
    r"""Whether two MATH answers are equal after normalisation, or as exact numbers.

    Example:
        >>> is_equiv("0.5", r"\frac{1}{2}"), is_equiv(".5", r"\tfrac{1}{2}"), is_equiv("1/3", "0.33")
        (True, True, False)
    """
    left, right = normalize_answer(answer), normalize_answer(ground_truth)
    if left == right:
        return True
    left_value, right_value = _as_number(left), _as_number(right)
    return left_value is not None and left_value == right_value


def compute_score(solution_str: str, ground_truth: str) -> float:
    r"""Score a MATH response: 1.0 if its last boxed answer equals the ground truth, else 0.0.

    Args:
        solution_str: The decoded response.
        ground_truth: The reference answer (the content of the solution's last ``\boxed{}``; a
            ground truth that still carries its ``\boxed{}`` is unwrapped).

    Returns:
        1.0 or 0.0; any exception inside scores 0.0.

    Example:
        >>> compute_score(r"Half of it: $\boxed{\dfrac12}$.", "0.5")
        1.0
        >>> compute_score(r"\boxed{3}", "4")
        0.0
        >>> compute_score("no box at all: 4", "4")
        0.0
    """
    try:
        boxed = last_boxed_only_string(solution_str)
        if boxed is None:
            return 0.0
        truth = str(ground_truth)
        truth_box = last_boxed_only_string(truth)
        if truth_box is not None:
            truth = remove_boxed(truth_box)
        return 1.0 if is_equiv(remove_boxed(boxed), truth) else 0.0
    except Exception:
        return 0.0
