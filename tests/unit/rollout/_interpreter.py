"""Running kernel checks under Triton's CPU interpreter, shared by the kernel test modules.

``TRITON_INTERPRET=1`` must be in the environment before a kernel module is imported, so each
``_*_check.py`` module holds its checks in a ``CHECKS`` dict and a ``main`` that runs them in a child
process (:func:`run_checks`); the test module starts that child once (:func:`interpreter_results`)
and reports each check as a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

UNIT_DIR = Path(__file__).resolve().parents[1]  # the checks run as modules ``rollout._*_check``


def run_checks(checks: dict[str, Callable[[], None]], names: list[str]) -> int:
    """Run the named checks (all when none), print ``{name: "ok" | error}`` as JSON, return 1 on a failure."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "run with TRITON_INTERPRET=1 in the environment (the kernels need the interpreter)"
        )
    results = {}
    for name in names or list(checks):
        try:
            checks[name]()
            results[name] = "ok"
        except Exception:  # reported per check to the parent test, which shows the traceback
            results[name] = traceback.format_exc(limit=4)
    print(json.dumps(results))
    return 0 if all(v == "ok" for v in results.values()) else 1


def interpreter_results(module: str) -> dict[str, str]:
    """Run ``rollout.<module>`` in a child process with the interpreter on; its per-check results."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    for name in ("RLKIT_TRITON", "RLKIT_DECODE_ATTN"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", f"rollout.{module}"],
        cwd=UNIT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the checks printed nothing (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return dict(json.loads(lines[-1]))
