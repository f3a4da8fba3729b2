"""``rollout.engine=vllm|server`` checked before Ray starts, and listed by ``rlkit doctor`` (no vllm run).

These run with or without vllm installed: where the package is missing, the expected line is the
install hint instead of the model check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.rollout.registry import AUTO_ENGINES, ENGINES, loads_checkpoint, resolve_engine
from rlkit.rollout.vllm_engine import MIN_CPU_HEAD_SIZE, vllm_runs_on_cpu, vllm_version

runner = CliRunner()
HAVE_VLLM = vllm_version() is not None


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting Ray fails the test: every check here runs before it."""

    def init(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", init)


def _config_only_model(folder: Path, head_dim: int) -> Path:
    """A model folder with a Qwen2 ``config.json`` only: the checks read nothing else."""
    folder.mkdir(parents=True)
    config = {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 2 * head_dim,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": head_dim,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "vocab_size": 320,
        "max_position_embeddings": 512,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _train(*overrides: str) -> tuple[int, str]:
    result = runner.invoke(app, ["train", "grpo", "--dry-run", *overrides])
    return result.exit_code, result.output


def test_registry_knows_vllm_and_server_but_auto_never_picks_them() -> None:
    assert {"vllm", "server"} <= set(ENGINES)
    assert AUTO_ENGINES == ("native", "hf")
    assert loads_checkpoint("vllm") and loads_checkpoint("server") and not loads_checkpoint("native")
    assert (
        resolve_engine("auto", {"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4})
        == "native"
    )


@pytest.mark.parametrize("engine", ["vllm", "server"])
def test_builtin_model_passes_the_checks_before_ray(engine: str, no_ray: None) -> None:
    """The built-in models (head size 32) are exported for vLLM: no refusal, only a missing vllm."""
    code, output = _train(f"rollout.engine={engine}")
    if HAVE_VLLM:
        assert code == 0, output
        assert f"checked rollout engine: {engine}" in output
    else:
        assert code == 2 and "Traceback" not in output, output
        assert "not installed" in output and "install_vllm_cpu.sh" in output


def test_vllm_on_a_small_head_model_is_one_line(tmp_path: Path, no_ray: None) -> None:
    model = _config_only_model(tmp_path / "m", head_dim=16)
    code, output = _train(f"model.path={model}", "rollout.engine=vllm")
    assert code == 2, output
    assert len([line for line in output.splitlines() if line.startswith("error:")]) == 1
    if not HAVE_VLLM:
        assert "needs a package that is not installed" in output and "install_vllm_cpu.sh" in output
    elif vllm_runs_on_cpu():
        assert f"head size 16: vLLM's CPU attention needs at least {MIN_CPU_HEAD_SIZE}" in output
        assert "rollout.engine=auto or native or hf" in output


def test_server_checks_depend_on_who_starts_it(tmp_path: Path, no_ray: None) -> None:
    model = _config_only_model(tmp_path / "m", head_dim=16)
    # a server given by URL: nothing to check here (it may run on a GPU elsewhere)
    code, output = _train(
        f"model.path={model}", "rollout.engine=server", "rollout.server.url=http://gpu:8000"
    )
    assert code == 0, output
    assert "checked rollout engine: server" in output
    code, output = _train(f"model.path={model}", "rollout.engine=server")
    assert code == 2, output
    if not HAVE_VLLM:
        assert "vllm package is not installed" in output and "rollout.server.url" in output
    elif vllm_runs_on_cpu():
        assert "cannot start a vLLM server for this model (head size 16" in output


@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed")
def test_vllm_with_a_runnable_model_passes_the_dry_run(tmp_path: Path, no_ray: None) -> None:
    model = _config_only_model(tmp_path / "m", head_dim=32)
    code, output = _train(f"model.path={model}", "rollout.engine=vllm", "rollout.vllm.kv_cache_gib=2")
    assert code == 0, output
    assert "checked rollout engine: vllm" in output


def test_vllm_keys_are_validated_at_compose_time() -> None:
    code, output = _train("rollout.vllm.kv_cache_gib=0")
    assert code == 2 and "rollout.vllm.kv_cache_gib" in output, output


def test_doctor_lists_the_vllm_engines() -> None:
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    version = vllm_version()
    lines = [line for line in result.output.splitlines() if "vllm" in line]
    assert lines, result.output
    if version is not None:
        assert any(version.split()[0] in line for line in lines), result.output


@pytest.mark.skipif(HAVE_VLLM, reason="vllm is installed (tests/integration/rollout_vllm/ runs it)")
def test_generate_with_vllm_without_vllm_is_one_line(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "1+1="}\n')
    out = tmp_path / "gen.jsonl"
    args = ["generate", "builtin:tiny", "--prompts", str(prompts), "--out", str(out), "--engine", "vllm"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "not installed" in result.output and not out.exists()
