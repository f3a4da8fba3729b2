"""The CLI: help, examples and error paths, through Typer's CliRunner and a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlkit.cli.app import app

runner = CliRunner()
COMMANDS = [c.name for c in app.registered_commands]


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_help_has_an_example(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_config_prints_resolved_yaml() -> None:
    result = runner.invoke(app, ["config", "grpo", "trainer.total_steps=7"])
    assert result.exit_code == 0, result.output
    assert "total_steps: 7" in result.output and "out_dir: null" in result.output  # runs/grpo/<time>


def test_config_explain_shows_docs() -> None:
    result = runner.invoke(app, ["config", "grpo", "--explain"])
    assert result.exit_code == 0 and "Prompts per RL step" in result.output


def test_misspelt_key_is_one_line_exit_2() -> None:
    result = runner.invoke(app, ["config", "grpo", "trainer.totl_steps=7"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "did you mean trainer.total_steps" in lines[0]
    assert "Traceback" not in result.output


def test_recipes_and_profiles_tables() -> None:
    out = runner.invoke(app, ["recipes"]).output
    assert "grpo" in out and "ppo" in out
    assert "cpu" in runner.invoke(app, ["profiles"]).output


def test_cp_writes_a_runnable_recipe(tmp_path: Path) -> None:
    dest = tmp_path / "mine.yaml"
    assert runner.invoke(app, ["cp", "grpo", str(dest)]).exit_code == 0
    result = runner.invoke(app, ["config", str(dest), "rollout.n=2"])
    assert result.exit_code == 0 and "'n': 2" in result.output
    again = runner.invoke(app, ["cp", "grpo", str(dest)])
    assert again.exit_code == 2 and "--force" in again.output


def _rlkit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "rlkit", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_subprocess_error_and_debug() -> None:
    bad = _rlkit("config", "nope")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "unknown recipe 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr
    debug = _rlkit("--debug", "config", "nope")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_subprocess_help_and_config() -> None:
    ok = _rlkit("config", "grpo", "trainer.total_steps=7")
    assert ok.returncode == 0 and "total_steps: 7" in ok.stdout
    assert "recipes" in _rlkit("--help").stdout
