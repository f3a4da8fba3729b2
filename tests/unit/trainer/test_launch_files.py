"""``rlkit launch``: the generated Slurm script, SkyPilot task and per-node commands.

The shell files are checked with ``bash -n`` (bash's own parser); the SkyPilot task with
SkyPilot's own loader where ``skypilot`` is installed, and as YAML with its structure otherwise.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlkit.cli.app import app


def _launch(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, ["launch", *args])
    assert result.exit_code == code, result.output
    return result.output


def _bash_parses(text: str, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(text)
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_slurm_script_follows_the_resolved_config(tmp_path: Path) -> None:
    text = _launch("slurm", "grpo", "--profile", "h100x8", "--nodes", "4", "trainer.out_dir=/shared/runs/g1")
    _bash_parses(text, tmp_path)
    lines = text.splitlines()
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --output=/shared/runs/g1/logs/slurm-%j.out",
        "export NCCL_NVLS_ENABLE=0",
        'export RAY_ADDRESS="$head_ip:6379"',
    ):
        assert line in lines, line
    head = next(x for x in lines if "ray start --head" in x)
    assert "--port=6379 --num-gpus=8" in head and "/shared/runs/g1/logs/ray-head.log" in head
    assert any('ray start --address="$head_ip:6379" --num-gpus=8' in x for x in lines)
    assert '[ "$alive" -ge 4 ] && break' in text  # rlkit starts once Ray reports every node
    assert lines[-1].startswith(
        "rlkit train grpo --profile h100x8 trainer.out_dir=/shared/runs/g1 --nodes 4 "
    )


def test_ray_commands_for_a_cpu_cluster(tmp_path: Path) -> None:
    text = _launch(
        "ray", "grpo", "--profile", "cpu", "--nodes", "2", "--head-ip", "10.0.0.1", "--port", "6400"
    )
    _bash_parses(text, tmp_path)
    assert "ray start --head --node-ip-address=10.0.0.1 --port=6400 --num-cpus=1" in text
    assert "ray start --address=10.0.0.1:6400 --num-cpus=1" in text
    assert "RAY_ADDRESS=10.0.0.1:6400 rlkit train grpo --profile cpu --nodes 2" in text
    assert "NCCL" not in text and "--num-gpus" not in text
    assert "${RAY_HEAD_IP:?" in _launch("ray", "grpo", "--profile", "cpu", "--nodes", "2")


def test_skypilot_task_structure() -> None:
    text = _launch("skypilot", "grpo", "--profile", "h200x8", "--nodes", "2")
    task = yaml.safe_load(text)
    assert task["num_nodes"] == 2 and task["resources"] == {"accelerators": "H200:8"}
    assert task["envs"]["NCCL_NVLS_ENABLE"] == "0" and task["workdir"] == "."
    assert task["setup"] == "pip install -e .\n"
    assert 'if [ "$SKYPILOT_NODE_RANK" = "0" ]; then' in task["run"]
    assert "rlkit train grpo --profile h200x8 --nodes 2" in task["run"]
    proc = subprocess.run(["bash", "-n"], input=task["run"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_skypilot_task_loads_with_skypilots_own_loader(tmp_path: Path) -> None:
    sky = pytest.importorskip("sky")
    path = tmp_path / "task.yaml"
    path.write_text(_launch("skypilot", "grpo", "--profile", "h100x8", "--nodes", "4"))
    task = sky.Task.from_yaml(str(path))
    assert task.num_nodes == 4
    assert [r.accelerators for r in task.resources] == [{"H100": 8}]
    assert task.envs["NCCL_NVLS_ENABLE"] == "0"


def test_what_launch_cannot_know_is_one_line() -> None:
    assert "hardware.device is auto" in _launch("slurm", "grpo", "hardware.device=auto", code=2)
    out = _launch("skypilot", "grpo", "--profile", "ascend910bx8", "--nodes", "2", code=2)
    assert "pass --accelerator NAME" in out
    assert "Ascend-910B:8" in _launch(
        "skypilot", "grpo", "--profile", "ascend910bx8", "--nodes", "2", "--accelerator", "Ascend-910B"
    )
    assert "unknown target" in _launch("pbs", "grpo", code=2)
