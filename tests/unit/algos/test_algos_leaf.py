"""rlkit.algos is a leaf: it imports torch, numpy, the standard library and rlkit.errors only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import rlkit.algos

ALLOWED_THIRD_PARTY = {"torch", "numpy"}
ALLOWED_RLKIT = ("rlkit.algos", "rlkit.errors")


def test_algos_imports_nothing_above_it() -> None:
    package = Path(rlkit.algos.__file__).parent
    for source in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "rlkit":
                    assert name.startswith(ALLOWED_RLKIT), f"{source.name} imports {name}"
                else:
                    assert top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names, (
                        f"{source.name} imports {name}"
                    )


def test_registries_are_plain_dicts() -> None:
    assert type(rlkit.algos.advantage_estimators) is dict
    assert type(rlkit.algos.policy_losses) is dict
