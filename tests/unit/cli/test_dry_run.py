"""``rlkit train --dry-run``, ``rlkit config --check/--sources``, ``rlkit sft --dry-run``, the automatic profile."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import torch
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.data.rl_parquet import rows_to_table
from rlkit.data_prep import arith

runner = CliRunner()
NO_GPU = not torch.cuda.is_available()


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tripwire: starting Ray fails the test (other tests of the session may have started it already)."""

    def init(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", init)


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_train_dry_run_prints_the_checks_and_ok(no_ray: None) -> None:
    result = runner.invoke(app, ["train", "grpo", "--dry-run", "trainer.total_steps=2"])
    assert result.exit_code == 0, result.output
    lines = _lines(result.output)
    assert lines[0].startswith("checked config:") and lines[-1].startswith("ok")
    assert any(line.startswith("checked data:") for line in lines)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "grpo", "--dry-run", "data.batch_size=24"], "actor.mini_batch_size=16 must divide"),
        (["config", "grpo", "--check", "rollout.top_p=2"], "rollout.top_p=2 is out of range"),
        (["sft", "--dry-run", "actor.lr=0"], "actor.lr=0 is out of range"),
        (["train", "grpo", "--dry-run", "trainer.loggers=[console,tensorboard]"], "trainer.loggers"),
    ],
)
def test_a_problem_is_one_line_exit_2(argv: list[str], needle: str) -> None:
    if "tensorboard" in argv[-1]:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is not None:
            pytest.skip("tensorboard is installed here")
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    (line,) = _lines(result.output)
    assert needle in line and "Traceback" not in result.output


def test_train_refuses_an_unknown_data_source_before_ray(tmp_path: Path, no_ray: None) -> None:
    rows = arith.generate(4, seed=0)
    rows[0]["data_source"] = "nobody/knows"
    file = tmp_path / "train.parquet"
    pq.write_table(rows_to_table(rows), file)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "grpo", f"data.train_files={file}", f"trainer.out_dir={out}"])
    assert result.exit_code == 2, result.output
    assert "'nobody/knows'" in result.output and "ray.init" not in result.output and not out.exists()


def test_config_check_and_sft_dry_run() -> None:
    for argv in (["config", "ppo", "--check"], ["sft", "--dry-run"], ["config", "sft", "--check"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, (argv, result.output)
        assert _lines(result.output)[-1].startswith("ok")


def test_sources_name_where_each_value_came_from(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text("trainer:\n  seed: 3\n")
    result = runner.invoke(app, ["config", "grpo", "--sources", "-c", str(user), "rollout.n=4"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in _lines(result.output)}
    assert rows["data.max_prompt_length"].split()[1] == "128"
    assert "recipe grpo.yaml, builtin_or (built-in model value)" in rows["data.max_prompt_length"]
    assert rows["rollout.n"].endswith("# override rollout.n=4")
    assert rows["trainer.seed"].endswith(f"# --config {user}")
    assert rows["data.batch_size"].endswith("# recipe grpo.yaml")
    assert rows["rollout.top_p"].endswith("# schema default")
    real = runner.invoke(app, ["config", "ppo", "--sources", f"model.path={tmp_path}"])
    rows = {line.split()[0]: line for line in _lines(real.output)}
    assert rows["actor.lr"].split()[1] == "1.0e-06" and "real-model value" in rows["actor.lr"]
    assert rows["data.max_response_length"].split()[1] == "512"
    assert rows["critic.lr"].split()[1] == "1.0e-05"


@pytest.mark.skipif(not NO_GPU, reason="the automatic cpu profile applies only without a GPU")
def test_cpu_profile_is_applied_and_recorded_without_a_gpu() -> None:
    result = runner.invoke(app, ["config", "grpo"])
    assert "  profile: cpu\n" in result.output and "  dtype: float32\n" in result.output
    sources = runner.invoke(app, ["config", "grpo", "--sources"]).output
    assert "profile cpu, picked: no GPU found" in sources
    explicit = runner.invoke(app, ["config", "grpo", "--profile", "h100x1"]).output
    assert "  profile: h100x1\n" in explicit
