"""Multi-turn GRPO (``rlkit train grpo_tools``: the tool loop, the calculator) on the vllm and server engines.

The same check as the native and hf engines' (tests/e2e/test_multi_turn_grpo.py, helper
tests/e2e/_recording_loop.py): two steps finish, the model calls the calculator, and every
trajectory the trainer got is the engine's output exactly (token ids, loss mask 1 only on them,
their log-probs), with no template mismatch. The tiny tool-use model goes to vLLM as an exported
folder: vLLM in the rollout worker (~30 s to start on a 2-core CPU), or a server the run starts
(~50 s; the folder's shared server runs another model, so the run cannot push its weights there).
``rlkit generate --agent tool --engine vllm`` is the slow test at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlkit.agents.loading import load_object

_HELPER = Path(__file__).parents[2] / "e2e" / "_recording_loop.py"


# the server run starts a server of its own (~1 min on 2 cores): slow, to keep the default run short;
# the contract suite covers the server engine in the default run
@pytest.mark.parametrize("engine", ["vllm", pytest.param("server", marks=pytest.mark.slow)])
def test_the_tool_recipe_runs_on_the_engine(
    engine: str, ray_session: None, tmp_path: Path, tiny_run: list[str]
) -> None:
    run_tool_recipe = load_object(f"{_HELPER}:run_tool_recipe", key="tests")
    # the server's start took over 300 s (the CPU default deadline) on a 2-core box shared with other jobs
    slack = ["hardware.worker_start_timeout_s=900"] if engine == "server" else []
    run_tool_recipe(tmp_path, tiny_run, f"rollout.engine={engine}", *slack)
    if engine == "server":
        assert (tmp_path / "run" / "vllm_server.log").is_file()


@pytest.mark.slow
def test_generate_an_agent_loop_with_the_vllm_engine(tmp_path: Path) -> None:
    """``rlkit generate builtin:tiny-tools --agent tool --tools calculator --engine vllm`` in its own
    process (vLLM in-process, as a user runs it): whole trajectories with calculator calls."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("475*36=", "371*17=", "135*26=")))
    out = tmp_path / "traj.jsonl"
    main = "from rlkit.cli.app import main; main()"
    cmd = [sys.executable, "-c", main, "generate", "builtin:tiny-tools", "--prompts", str(prompts)]
    cmd += ["--out", str(out), "--agent", "tool", "--tools", "calculator", "--engine", "vllm"]
    cmd += ["--n", "4", "--temperature", "0.6", "--max-tokens", "160", "--max-turns", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    trajectories = [t for row in rows for t in row["trajectories"]]
    assert len(rows) == 3 and len(trajectories) == 12
    for t in trajectories:
        mask, logprobs = t["loss_mask"], t["logprobs"]
        assert len(mask) == len(logprobs) == len(t["response_ids"]) and not t["template_mismatch"]
        assert all(lp == 0.0 for lp, m in zip(logprobs, mask, strict=True) if not m)
        assert all(lp <= 0.0 for lp in logprobs) and sum(mask) > 0
    calls = [c for t in trajectories for c in t["tool_calls"]]
    assert calls and all(c["name"] == "calculator" and c["error"] is None for c in calls)
    assert any(0 in t["loss_mask"] for t in trajectories)  # the calculator's results, masked out
