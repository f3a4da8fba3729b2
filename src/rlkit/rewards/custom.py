"""A user's scoring function from a Python file, by reference (``reward.custom.path/name``).

The file is user code: it is imported only inside the scoring worker processes
(:mod:`rlkit.rewards.pool`), never in the trainer. :func:`load_custom_reward` therefore checks
the file with :mod:`ast` (it exists, parses, binds the name to something callable with verl's
keywords) and returns a picklable :class:`CustomRewardFn` that a worker resolves on first use.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlkit.errors import UserError

#: Keywords a per-sample function receives (verl's ``compute_score`` signature).
SAMPLE_KEYWORDS = ("data_source", "solution_str", "ground_truth", "extra_info")
#: Keywords a batched function receives (verl's ``BatchRewardManager``).
BATCH_KEYWORDS = ("data_sources", "solution_strs", "ground_truths", "extra_infos")

_HINT_PATH = "set reward.custom.path to a Python file that defines your scoring function"
_HINT_NAME = "set reward.custom.name to the name of the function in reward.custom.path"
_LITERALS = (ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.JoinedStr, ast.ListComp, ast.DictComp)
# Resolved functions of this process, keyed by (path, name): a worker imports each file once.
_RESOLVED: dict[tuple[str, str], Callable[..., Any]] = {}


@dataclass(frozen=True)
class CustomRewardFn:
    """A picklable reference to ``name`` in the file ``path``; calling it imports the file.

    Attributes:
        path: Absolute path of the Python file.
        name: Name of the function in it.
    """

    path: str
    name: str

    def resolve(self) -> Callable[..., Any]:
        """Import the file (once per process) and return the function.

        The file's folder goes on ``sys.path`` so that it can import helper modules next to it.
        """
        key = (self.path, self.name)
        if key not in _RESOLVED:
            digest = hashlib.sha1(self.path.encode()).hexdigest()[:10]
            module_name = f"rlkit_custom_reward_{digest}"
            spec = importlib.util.spec_from_file_location(module_name, self.path)
            if spec is None or spec.loader is None:
                raise UserError(f"reward.custom.path: cannot import {self.path}", hint=_HINT_PATH)
            module = importlib.util.module_from_spec(spec)
            folder = str(Path(self.path).parent)
            if folder not in sys.path:
                sys.path.insert(0, folder)
            # Registered before exec so that pickling objects defined in the file works.
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            fn = getattr(module, self.name, None)
            if fn is None:
                raise UserError(f"reward.custom.name: {self.path} defines no {self.name!r}", hint=_HINT_NAME)
            if not callable(fn):
                raise UserError(
                    f"reward.custom.name: {self.name!r} in {self.path} is not callable", hint=_HINT_NAME
                )
            _RESOLVED[key] = fn
        return _RESOLVED[key]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.resolve()(*args, **kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _module_bindings(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """Top-level ``(name, node)`` bindings in source order, looking inside module-level if/try/with."""
    bindings: list[tuple[str, ast.AST]] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bindings.append((node.name, node))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    bindings.append((target.id, node.value))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            bindings.append((node.target.id, node.value))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bindings.append(((alias.asname or alias.name).split(".")[0], node))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            nested = list(node.body) + list(getattr(node, "orelse", []))
            nested += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
            nested += list(getattr(node, "finalbody", []))
            pending[:0] = nested
    return bindings


def _check_parameters(
    node: ast.FunctionDef | ast.AsyncFunctionDef, keywords: tuple[str, ...], where: str
) -> None:
    """The function must accept ``keywords`` by name and require nothing else."""
    args = node.args
    named = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    positional = args.posonlyargs + args.args
    required = [a.arg for a in positional[: len(positional) - len(args.defaults)]]
    required += [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None]
    posonly = {a.arg for a in args.posonlyargs}
    missing = [k for k in keywords if (k not in named or k in posonly) and args.kwarg is None]
    extra = [r for r in required if r not in keywords]
    if missing or extra:
        problem = f"does not accept {', '.join(missing)}" if missing else f"requires {', '.join(extra)}"
        raise UserError(
            f"reward.custom: {where} {problem}",
            hint=f"define it as `def {node.name}({', '.join(keywords)}, **kwargs)`",
        )


def load_custom_reward(
    path: str | Path, name: str = "compute_score", *, batched: bool = False
) -> CustomRewardFn:
    """Check a user's scoring file without running it and return a reference to its function.

    Args:
        path: The Python file (``reward.custom.path``).
        name: The function's name in it (``reward.custom.name``).
        batched: The function is a batched one (``fn(data_sources, solution_strs, ground_truths,
            extra_infos) -> list``) for the ``batch`` manager, instead of verl's per-sample
            ``fn(data_source, solution_str, ground_truth, extra_info=None)``.

    Returns:
        A picklable callable; the file is imported where it is first called (a scoring worker).

    Raises:
        UserError: The file is missing or not valid Python, does not define ``name``, binds it to
            something that is not callable, or defines it with parameters the manager cannot pass.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"reward.custom.path: no such file {str(path)!r}", hint=_HINT_PATH)
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        line = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) else ""
        raise UserError(
            f"reward.custom.path: {file} is not valid Python{line}: {exc}", hint="fix the file"
        ) from exc
    bindings = _module_bindings(tree)
    bound = [node for bound_name, node in bindings if bound_name == name]
    has_star = any(isinstance(n, ast.ImportFrom) and n.names[0].name == "*" for _, n in bindings)
    where = f"{name!r} in {file}"
    if not bound and not has_star:
        defined = sorted(
            {n for n, node in bindings if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        )
        listing = f" (it defines: {', '.join(defined)})" if defined else ""
        raise UserError(f"reward.custom.name: {file} defines no {name!r}{listing}", hint=_HINT_NAME)
    if bound:
        last = bound[-1]
        if isinstance(last, _LITERALS):
            raise UserError(
                f"reward.custom.name: {where} is a {type(last).__name__.lower()}, not a function",
                hint=_HINT_NAME,
            )
        if isinstance(last, (ast.FunctionDef, ast.AsyncFunctionDef)):
            _check_parameters(last, BATCH_KEYWORDS if batched else SAMPLE_KEYWORDS, where)
    return CustomRewardFn(path=str(file.resolve()), name=name)
