"""`rlkit migrate verl` on real verl example scripts (tests/assets/verl, copied from verl's repository)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.config.fields import schema_fields
from rlkit.migrate.docs import rewrite
from rlkit.migrate.shell import expand, parse_script
from rlkit.migrate.verl import migrate, read_verl
from rlkit.migrate.verl_keys import RULES, canonical

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "tests" / "assets" / "verl"
MULTI_TURN = "rollout.multi_turn."

# file -> (recipe, overrides that must be in the command, verl keys that must be listed as not mapped)
CASES = {
    "run_qwen2-7b.sh": (
        "grpo",
        {
            "model.path": "Qwen/Qwen2-7B-Instruct",
            "data.batch_size": 1024,
            "actor.lr": 1e-6,
            "rollout.n": 5,
            "actor.use_kl_loss": True,
            "rollout.engine": "vllm",
            "trainer.loggers": ["console", "jsonl", "wandb"],
            "trainer.save_every": 20,
            "trainer.val_every": 5,
            "hardware.devices_per_node": 8,
            "data.train_files": ["$HOME/data/gsm8k/train.parquet"],
        },
        ["trainer.total_epochs", "actor_rollout_ref.rollout.tensor_model_parallel_size"],
    ),
    "run_qwen2_5-3b_gsm8k_grpo_lora.sh": (
        "grpo",
        {"model.lora_rank": 64, "model.lora_alpha": 32, "actor.lr": 3e-6, "data.shuffle": False},
        ["trainer.total_epochs"],
    ),
    "run_deepseek7b_llm.sh": (
        "ppo",
        {
            "critic.model_path": "deepseek-ai/deepseek-llm-7b-chat",
            "actor.mini_batch_size": 256,
            "trainer.val_every": 1,
        },
        ["trainer.use_legacy_worker_impl", "critic.model.fsdp_config.optimizer_offload"],
    ),
    "run_dapo.sh": (
        "dapo",
        {
            "data.batch_size": 256,
            "actor.mini_batch_size": 128,
            "rollout.n": 4,
            "data.max_response_length": 2048,
            "reward.overlong.buffer_len": 128,
            "algo.filter_groups.metric": "seq_reward",
            "trainer.total_steps": 1,
            "trainer.resume": "never",
            "model.path": "${HOME}/models/Qwen/Qwen2.5-0.5B-Instruct",
        },
        ["data.gen_batch_size", "trainer.save_freq"],
    ),
    "run_qwen2.5-3b_gsm8k_multiturn.sh": (
        "grpo",
        {"rollout.n": 16, "data.batch_size": 256, "trainer.val_every": 20},
        ["actor_rollout_ref.rollout.name", "global_profiler.tool", "--config-name"],
    ),
    "gsm8k_multiturn_grpo.yaml": (
        "ppo",
        {"data.batch_size": 256, "data.max_prompt_length": 1024},
        ["actor_rollout_ref.rollout.name"],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_verl_example_converts(name: str) -> None:
    recipe, expected, unmapped = CASES[name]
    result = migrate(ASSETS / name)
    assert result.recipe == recipe
    for key, value in expected.items():
        assert result.overrides.get(key) == value, (key, result.overrides.get(key))
    listed = [k for k, _ in result.not_mapped]
    for key in unmapped:
        assert any(item.startswith(key) for item in listed), (key, listed)
    assert all(why for _, why in result.not_mapped + result.not_needed + result.recipe_default)
    assert result.compose_error is None, result.compose_error  # the printed command is valid (LoRA too)
    # every verl setting of the file is accounted for, once
    _, pairs, other = read_verl(ASSETS / name)
    accounted = len(result.not_mapped) + len(result.not_needed) + len(result.recipe_default)
    accounted += len({result.origin[k] for k in result.overrides})
    estimator = any(canonical(k) == "algorithm.adv_estimator" for k, _ in pairs)
    assert accounted == len(pairs) + len(other) - estimator


def test_multi_turn_keys_map_where_the_schema_has_them() -> None:
    result = migrate(ASSETS / "gsm8k_multiturn_grpo.yaml")
    if "rollout.multi_turn.max_turns" in schema_fields():  # 5 is also rlkit's default: left out as such
        assert result.overrides.get("rollout.multi_turn.max_turns", 5) == 5
        assert "rollout.multi_turn.max_turns" in result.overrides or any(
            "max_assistant_turns" in k for k, _ in result.recipe_default
        )
        assert result.overrides["rollout.multi_turn.enable"] is True
    else:
        assert any(
            "max_assistant_turns" in k and "has no rollout.multi_turn.max_turns" in why
            for k, why in result.not_mapped
        )


def test_cli_prints_the_command_and_the_reasons() -> None:
    result = CliRunner().invoke(app, ["migrate", "verl", str(ASSETS / "run_qwen2-7b.sh")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1] == "rlkit train grpo \\" and "# not mapped: set these by hand, or drop them (3):" in lines
    assert any(line.startswith("#   trainer.total_epochs=15  -- rlkit counts steps") for line in lines)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["migrate", "verl", str(tmp_path / "nope.sh")])
    assert result.exit_code == 2 and "no such file" in result.output
    script = tmp_path / "train.sh"
    script.write_text("echo hello\n")
    result = runner.invoke(app, ["migrate", "verl", str(script)])
    assert result.exit_code == 2 and "no verl trainer command found" in result.output


def test_later_reward_layout_and_yaml(tmp_path: Path) -> None:
    config = tmp_path / "verl.yaml"
    config.write_text(
        "algorithm: {adv_estimator: grpo, filter_groups: {enable: true}}\n"
        "reward: {reward_manager: {name: batch}, custom_reward_function: {path: my_reward.py, name: score},"
        " overlong_buffer: {len: 64}}\n"
        "trainer: {logger: [console, mlflow]}\n"
    )
    result = migrate(config)
    assert result.recipe == "dapo"
    assert (
        result.overrides["reward.manager"] == "batch"
        and result.overrides["reward.custom.path"] == "my_reward.py"
    )
    assert (
        result.overrides["reward.custom.name"] == "score"
        and result.overrides["reward.overlong.buffer_len"] == 64
    )
    assert any(k.startswith("trainer.logger") and "mlflow" in why for k, why in result.not_mapped)


def test_shell_variables_arithmetic_and_defaults() -> None:
    env = {"N": "4", "HOME_DIR": "/data"}
    assert expand("$((N * 2 + 1))", env) == "9"
    assert expand("${MISSING:-${HOME_DIR}/x}", env) == "/data/x"
    assert expand("$HOME/$N", env) == "$HOME/4"  # not the script's: left for the user's shell
    script = parse_script(
        "B=2 # micro\nG=$((B * 4))\nexport NAME=run\npython3 -m verl.trainer.main_ppo \\\n"
        '    data.train_batch_size=$G \\\n    trainer.experiment_name="${NAME}_x" $@\n',
        "s.sh",
    )
    assert script.entry == "verl.trainer.main_ppo"
    assert script.overrides == [("data.train_batch_size", "8"), ("trainer.experiment_name", "run_x")]


def test_every_mapped_key_is_an_rlkit_key() -> None:
    known = schema_fields()
    for rule in RULES:
        if rule.kind == "map" and rule.rlkit != "recipe":
            assert rule.rlkit in known or rule.rlkit.startswith(MULTI_TURN), rule
        else:
            assert rule.note, rule  # a key rlkit does not take says why


def test_the_docs_table_is_current() -> None:
    page = (ROOT / "docs" / "coming-from-verl.md").read_text()
    assert rewrite(page) == page, "docs/coming-from-verl.md is stale: run `python -m rlkit.migrate.docs`"
