"""Multi-turn GRPO (``rlkit train grpo_tools``: the tool loop, the calculator) on the vllm and server engines.

The same check as the native and hf engines' (tests/e2e/test_multi_turn_grpo.py, helper
tests/e2e/_recording_loop.py): two steps finish, the model calls the calculator, and every
trajectory the trainer got is the engine's output exactly (token ids, loss mask 1 only on them,
their log-probs), with no template mismatch. The tiny tool-use model goes to vLLM as an exported
folder: vLLM in the rollout worker (~30 s to start on a 2-core CPU), or a server the run starts
(~50 s; the folder's shared server runs another model, so the run cannot push its weights there).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rlkit.agents.loading import load_object

_HELPER = Path(__file__).parents[2] / "e2e" / "_recording_loop.py"


@pytest.mark.parametrize("engine", ["vllm", "server"])
def test_the_tool_recipe_runs_on_the_engine(
    engine: str, ray_session: None, tmp_path: Path, tiny_run: list[str]
) -> None:
    run_tool_recipe = load_object(f"{_HELPER}:run_tool_recipe", key="tests")
    # the server's start took over 300 s (the CPU default deadline) on a 2-core box shared with other jobs
    slack = ["hardware.worker_start_timeout_s=900"] if engine == "server" else []
    run_tool_recipe(tmp_path, tiny_run, f"rollout.engine={engine}", *slack)
    if engine == "server":
        assert (tmp_path / "run" / "vllm_server.log").is_file()
