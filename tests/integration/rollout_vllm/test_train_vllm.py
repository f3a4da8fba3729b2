"""``rlkit train grpo`` end to end with ``rollout.engine=vllm`` (a tiny Phi-3) and ``server`` (a tiny Qwen2),
and both on the embedded default (``builtin:tiny-arith``, exported to a temporary folder for vLLM),
which also trains with LoRA on ``vllm`` (merged weights pushed).

The ``vllm`` runs start vLLM inside the rollout worker (~10-30 s on a 2-core CPU, then ~1 s a step);
the ``server`` run on the Qwen2 uses the folder's rlkit-started server by URL (conftest.py), the one on
the embedded default starts its own (~50 s), as a user's run does. All check that the run ends,
that metrics.jsonl has the steps, and that the rollout/trainer log-prob gap after the weight pushes
is the fp32 summation-order gap (the pushed weights are the trained ones).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from rlkit.cli.app import app

from .tiny_vllm_model import hf_tensors, save_tiny_phi3

# fp32 on both sides (vLLM's CPU kernels vs the packed trainer forward): ~1e-6 seen, as in the
# engine tests' 1e-4 bound
GAP_ATOL = 1e-4


def _train(model: Path | None, out: Path, tiny_run: list[str], *overrides: str) -> list[dict]:
    """Run ``rlkit train grpo`` (``model`` None: the embedded default); overrides[0] names the engine."""
    args = [f"model.path={model}"] if model is not None else []
    result = CliRunner().invoke(
        app, ["train", "grpo", *args, *tiny_run, *overrides, f"trainer.out_dir={out}"]
    )
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["rollout"]["engine"] == overrides[0].split("=")[1]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "reward/mean" in row]


def test_grpo_trains_with_the_vllm_engine(tmp_path: Path, ray_session: None, tiny_run: list[str]) -> None:
    # a Phi-3 (not a native-decoder architecture: the actor trains it through transformers); the
    # contract suite covers Qwen2 on this engine
    model = save_tiny_phi3(tmp_path / "phi3")
    steps = _train(model, tmp_path / "run", tiny_run, "rollout.engine=vllm")
    assert [row["step"] for row in steps] == [1, 2]
    for row in steps:
        assert row["rollout/logprob_gap_abs"] < GAP_ATOL, row


def test_grpo_trains_with_the_server_engine(
    tiny_paths: tuple[Path, Path],
    tmp_path: Path,
    ray_session: None,
    vllm_server: dict,
    server_engine: Any,
    tiny_run: list[str],
) -> None:
    """GRPO through the folder's rlkit-started server (by URL: one server start for the folder)."""
    try:
        steps = _train(
            tiny_paths[0],
            tmp_path / "run",
            tiny_run,
            "rollout.engine=server",
            f"rollout.server.url={vllm_server['url']}",
        )
    finally:
        server_engine.update_weights(hf_tensors(tiny_paths[0]))  # the run pushed its trained weights
    assert [row["step"] for row in steps] == [1, 2]
    for row in steps:
        assert row["rollout/logprob_gap_abs"] < GAP_ATOL, row


def _exported_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("rlkit-builtin-*"))


# the server run starts a server of its own (~1 min on 2 cores): slow, to keep the default run short;
# the contract suite covers the server engine in the default run
@pytest.mark.parametrize("engine", ["vllm", pytest.param("server", marks=pytest.mark.slow)])
def test_grpo_trains_the_embedded_default(
    engine: str, tmp_path: Path, ray_session: None, tiny_run: list[str]
) -> None:
    """``rlkit train grpo rollout.engine=vllm|server``: the built-in model goes to vLLM as a folder
    (the server one rlkit starts), the pushed weights are the trained ones, and the folder is gone."""
    before = _exported_folders()
    # recompute: the embedded default's bypass mode would take vLLM's log-probs as the trainer's and
    # log no rollout/trainer gap
    overrides = (f"rollout.engine={engine}", "actor.old_log_probs=recompute")
    steps = _train(None, tmp_path / "run", tiny_run, *overrides)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["path"] == "builtin:tiny-arith"
    assert [row["step"] for row in steps] == [1, 2]
    for row in steps:
        assert row["rollout/logprob_gap_abs"] < GAP_ATOL, row
    if engine == "server":
        assert (tmp_path / "run" / "vllm_server.log").is_file()
    assert _exported_folders() <= before  # the engine's close removed its export


@pytest.mark.slow  # a server start of its own (~1 min) on top of the default run's two
def test_grpo_trains_a_phi3_through_a_server_rlkit_starts(
    tmp_path: Path, ray_session: None, tiny_run: list[str]
) -> None:
    """``rollout.engine=server`` on an architecture the native decoder does not run (Phi-3): the
    run starts a vLLM server on the model, pushes each step's trained weights through the server's
    update route, and stops it at the end."""
    model = save_tiny_phi3(tmp_path / "phi3")
    steps = _train(model, tmp_path / "run", tiny_run, "rollout.engine=server")
    assert [row["step"] for row in steps] == [1, 2]
    for row in steps:
        assert row["rollout/logprob_gap_abs"] < GAP_ATOL, row
    assert (tmp_path / "run" / "vllm_server.log").is_file()


@pytest.mark.slow  # ~5 min here; vLLM gets an ordinary full push, which the default-run tests cover
def test_lora_grpo_pushes_merged_weights_to_vllm(
    tmp_path: Path, ray_session: None, tiny_run: list[str]
) -> None:
    """``model.lora_rank=8`` on the embedded default: vLLM gets the merged weights of the trained
    adapters (the gap is at fp32 rounding after the adapters moved the policy)."""
    lora = ("model.lora_rank=8", "actor.lr=2e-3", "actor.warmup_steps=0", "actor.use_kl_loss=true")
    steps = _train(
        None, tmp_path / "run", tiny_run, "rollout.engine=vllm", "actor.old_log_probs=recompute", *lora
    )
    assert [row["step"] for row in steps] == [1, 2]
    assert steps[-1]["actor/kl_loss"] > 0.0  # the policy left its base (the reference)
    for row in steps:
        assert row["rollout/logprob_gap_abs"] < GAP_ATOL, row


@pytest.mark.slow
def test_generate_with_the_vllm_engine(tiny_paths: tuple[Path, Path], tmp_path: Path) -> None:
    """``rlkit generate --engine vllm`` in its own process (vLLM in-process, as a user runs it)."""
    import subprocess
    import sys

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "1+1="}\n{"prompt": "hello"}\n')
    out = tmp_path / "gen.jsonl"
    main = "from rlkit.cli.app import main; main()"
    cmd = [sys.executable, "-c", main, "generate", str(tiny_paths[0]), "--prompts", str(prompts)]
    cmd += ["--out", str(out), "--engine", "vllm", "--max-tokens", "6", "--n", "2", "--temperature", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert len(row["token_ids"]) == 2 and row["token_ids"][0] == row["token_ids"][1]  # greedy, n=2
        assert all(len(ids) == 6 for ids in row["token_ids"])
