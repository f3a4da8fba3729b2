"""Load a user's class named in config: ``package.module:Name`` or ``path/to/file.py:Name``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from rlkit.errors import UserError


def load_object(spec: str, *, key: str) -> Any:
    """The object ``spec`` names (``module:Name``, ``module.Name`` or ``file.py:Name``).

    Args:
        spec: Where the object lives.
        key: The config key that named it (for the error).

    Raises:
        UserError: the module or file cannot be imported, or has no such name.
    """
    target, sep, name = spec.rpartition(":")
    if not sep:
        target, _, name = spec.rpartition(".")
    if not target or not name:
        raise UserError(
            f"{key}={spec!r} does not name a class", hint="use package.module:Class or file.py:Class"
        )
    try:
        module = _import(target)
    except UserError:
        raise
    except Exception as exc:  # a user's module may raise anything while importing
        raise UserError(
            f"{key}={spec!r}: cannot import {target} ({exc})", hint="check the module path"
        ) from exc
    if not hasattr(module, name):
        raise UserError(f"{key}={spec!r}: {target} has no {name!r}", hint="check the class name")
    return getattr(module, name)


def _import(target: str) -> Any:
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"no such file {target}", hint="give the path of a Python file")
        module_name = f"rlkit_user_{path.stem}_{abs(hash(str(path)))}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(target)
