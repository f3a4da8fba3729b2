"""Read the verl overrides out of a launch script: ``python3 -m verl.trainer.main_ppo key=value ...``.

Only what such scripts do is understood: line continuations, comments, top-level variable
assignments (``NAME=value``, ``export NAME=value``, ``${NAME:-default}``, ``$((a * b))``) substituted
into the overrides. Anything the script would compute at run time (``$(date)``, ``$HOME``) is kept as
written, for the user's shell to expand.
"""

from __future__ import annotations

import ast
import operator
import re
import shlex
from dataclasses import dataclass, field

from rlkit.errors import UserError

_ENTRY = re.compile(r"(?:^|\s)(?:python3?|uv run python3?)?\s*-m\s+([\w.]*main_\w+)(?=\s|$)")
_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_]\w*)=(.*)$")
_ARITH = re.compile(r"\$\(\(([^()]*)\)\)")
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.floordiv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


@dataclass
class Script:
    """What a verl launch script runs: its entry module, ``key=value`` overrides and other arguments."""

    entry: str
    overrides: list[tuple[str, str]] = field(default_factory=list)
    other_args: list[str] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    if current:
        lines.append(current)
    return lines


def _arith(expr: str, env: dict[str, str]) -> str | None:
    text = re.sub(r"\$?\{?([A-Za-z_]\w*)\}?", lambda m: env.get(m.group(1), m.group(0)), expr)
    try:
        return str(_eval(ast.parse(text.strip(), mode="eval").body))
    except (SyntaxError, ValueError, KeyError, ZeroDivisionError):
        return None


def _eval(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return int(_OPS[type(node.op)](_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand)
    raise ValueError("not integer arithmetic")


def expand(value: str, env: dict[str, str]) -> str:
    """Substitute the script's own variables (``$X``, ``${X}``, ``${X:-default}``, ``${X,,}``,
    ``$((...))``); any other ``$`` expression stays as written."""
    value = _ARITH.sub(lambda m: _arith(m.group(1), env) or m.group(0), value)
    out, i = [], 0
    while i < len(value):
        if value.startswith("${", i):
            end = _closing_brace(value, i + 2)
            if end < 0:
                out.append(value[i:])
                break
            out.append(_braced(value[i + 2 : end], env) or value[i : end + 1])
            i = end + 1
        elif value[i] == "$" and (m := re.match(r"[A-Za-z_]\w*", value[i + 1 :])):
            out.append(env.get(m.group(0), "$" + m.group(0)))
            i += 1 + len(m.group(0))
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return -1


def _braced(inner: str, env: dict[str, str]) -> str | None:
    """The value of ``${inner}``, or None when it is not the script's to give."""
    m = re.fullmatch(r"([A-Za-z_]\w*)(?::-(.*)|(,,|\^\^))?", inner, re.DOTALL)
    if m is None:
        return None
    name, default, case = m.group(1), m.group(2), m.group(3)
    if name in env:
        found = env[name]
        return found.lower() if case == ",," else found.upper() if case == "^^" else found
    if default is not None:
        return expand(default, env)
    return None


def _assignment_value(rest: str) -> str:
    rest = rest.strip()
    if rest.startswith("$(("):
        end = rest.find("))")
        return rest[: end + 2] if end >= 0 else rest
    try:
        parts = shlex.split(rest, comments=True)
    except ValueError:
        return rest
    return parts[0] if parts else ""


def parse_script(text: str, source: str) -> Script:
    """The overrides of the ``-m ...main_ppo`` (or ``main_dapo``, ...) command in ``text``.

    Raises:
        UserError: No verl trainer command in the script.
    """
    env: dict[str, str] = {}
    for line in _logical_lines(text):
        entry = _ENTRY.search(line)
        if entry is None:
            assigned = _ASSIGN.match(line)
            if assigned and not line.lstrip().startswith("#"):
                env[assigned.group(1)] = expand(_assignment_value(assigned.group(2)), env)
            continue
        try:
            tokens = shlex.split(line[entry.end() :], comments=True)
        except ValueError as exc:
            raise UserError(
                f"{source}: cannot read the verl command ({exc})", hint="check its quotes"
            ) from exc
        script = Script(entry.group(1))
        for token in tokens:
            if token in ("$@", "$*", '"$@"'):
                continue
            key, sep, value = token.partition("=")
            if sep and not key.startswith("-") and re.fullmatch(r"[+~]{0,2}[\w.]+", key):
                script.overrides.append((key, expand(value, env)))
            else:
                script.other_args.append(expand(token, env))
        return script
    raise UserError(
        f"{source}: no verl trainer command found (python3 -m verl.trainer.main_ppo key=value ...)",
        hint="pass a verl launch script or a verl YAML config",
    )
