"""Multi-turn GRPO through the CLI: the single_turn loop is today's rollout, the tool recipe runs on
the native and hf engines with trajectories that are the engine's output exactly (the vllm and
server engines: tests/integration/rollout_vllm/test_multi_turn_vllm.py), and a resume in the middle
of a multi-turn run is exact."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ._recording_loop import run_tool_recipe
from .test_resume import assert_same_metrics, metrics, train

ENV = f"{Path(__file__).parent / '_agent_env.py'}:Counter"
SHORT = ["trainer.val_every=0", "trainer.total_steps=2"]  # fmt: skip


def _interactions(tmp_path: Path) -> Path:
    path = tmp_path / "interaction.yaml"
    path.write_text(
        "interaction:\n  - name: retry\n    class_name: rlkit.agents.interactions.Gsm8kInteraction\n"
        "    config: {retry_message: again}\n"
    )
    return path


def _multi_turn(tmp_path: Path, engine: str) -> list[str]:
    return [
        "rollout.multi_turn.enable=true",
        "rollout.multi_turn.agent=tool",
        f"rollout.multi_turn.environment={ENV}",
        f"rollout.multi_turn.interaction_config_path={_interactions(tmp_path)}",
        "rollout.multi_turn.max_turns=2",
        "data.max_response_length=64",
        f"rollout.engine={engine}",
    ]


def test_the_single_turn_loop_gives_todays_results(ray_session: None, tmp_path: Path) -> None:
    train("grpo", tmp_path / "direct", *SHORT)
    train(
        "grpo",
        tmp_path / "loop",
        *SHORT,
        "rollout.multi_turn.enable=true",
        "rollout.multi_turn.agent=single_turn",
    )
    direct, loop = metrics(tmp_path / "direct"), metrics(tmp_path / "loop")
    for step in (1, 2):
        agent = {k for k in loop[step] if k.startswith("agent/")}
        assert loop[step]["agent/num_turns/mean"] == 1.0 and loop[step]["agent/tool_calls/total"] == 0.0
        assert_same_metrics(direct[step], {k: v for k, v in loop[step].items() if k not in agent}, 0.0)


def _check_agent_metrics(m: dict[str, float], prefix: str = "agent/") -> None:
    assert 1.0 <= m[f"{prefix}num_turns/mean"] <= 2.0 and m[f"{prefix}num_turns/max"] == 2.0
    assert m[f"{prefix}template_mismatch/count"] == 0.0 and m[f"{prefix}tokens/template_mean"] > 0


def test_multi_turn_grpo_runs_with_the_hf_engine_on_two_workers(ray_session: None, tmp_path: Path) -> None:
    """Each worker renders its shard's prompts with the tools, and the shards still line up; the
    native engine runs the same loop in the resume test below."""
    out = tmp_path / "hf"
    val = ["trainer.val_every=2", "data.val_batch_size=8"]
    train(
        "grpo",
        out,
        "trainer.total_steps=2",
        *val,
        *_multi_turn(tmp_path, "hf"),
        "hardware.devices_per_node=2",
    )
    got = metrics(out)
    for step in (1, 2):
        _check_agent_metrics(got[step])
        assert got[step]["agent/tokens/prompt_mean"] > got[step]["prompt_length/mean"] / 2
        assert math.isfinite(got[step]["actor/pg_loss"])
    assert got[2]["val/agent/num_turns/mean"] >= 1.0


@pytest.mark.parametrize("engine", ["native", "hf"])
def test_the_tool_recipe_runs_on_the_engine(
    engine: str, ray_session: None, tmp_path: Path, tiny_run: list[str]
) -> None:
    """The model calls the calculator; its tokens reach the trainer exactly as the engine made them,
    masked in, with their log-probs; the tool results and separators are masked out."""
    run_tool_recipe(tmp_path, tiny_run, f"rollout.engine={engine}")


def test_resume_in_the_middle_of_a_multi_turn_run_is_exact(ray_session: None, tmp_path: Path) -> None:
    mt = _multi_turn(tmp_path, "native")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train("grpo", straight, *mt, "trainer.val_every=0", "trainer.total_steps=3", "trainer.save_every=2")
    train("grpo", resumed, *mt, "trainer.val_every=0", "trainer.total_steps=2")
    log = train("grpo", resumed, *mt, "trainer.val_every=0", "trainer.total_steps=3")
    assert "resuming from" in log
    expected, got = metrics(straight), metrics(resumed)
    for step in (1, 2, 3):
        _check_agent_metrics(expected[step])
    assert_same_metrics(expected[3], got[3], 1e-6)
