"""Rules between keys, refused at compose time; scalars for list keys; where values came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlkit.config.load import load_config
from rlkit.errors import UserError

SPLIT = ["hardware.placement=split", "hardware.devices_per_node=2", "hardware.rollout_devices=1"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.batch_size=24"], "actor.mini_batch_size=16 must divide data.batch_size=24"),
        (["actor.mini_batch_size=64"], "actor.mini_batch_size=64 must divide data.batch_size=32"),
        (["hardware.devices_per_node=3"], "256 rows do not split evenly over 3 workers"),
        (
            ["hardware.devices_per_node=4", "rollout.n=1", "data.batch_size=8", "actor.mini_batch_size=2"],
            "actor.mini_batch_size x rollout.n = 2 x 1 rows",
        ),
        (["trainer.profile_steps=[3,2]"], "trainer.profile_steps=[3, 2] must be [first, last]"),
        (["trainer.profile_steps=[1,2,3]"], "must be [first, last]"),
        (
            ["trainer.profile=torch", "trainer.total_steps=1", "trainer.profile_steps=[2,3]"],
            "starts at step 2",
        ),
        (["actor.use_kl_loss=true", "ref.enable=false"], "need a reference model"),
        (["algo.advantage=gae", "critic.enable=false"], "algo.advantage=gae needs a critic"),
        (["reward.manager=batch"], "reward.manager=batch needs a batched function"),
        (
            ["reward.overlong.enable=true", "reward.overlong.buffer_len=64"],
            "longer than data.max_response_length=32",
        ),
        (["hardware.placement=split"], "hardware.rollout_devices=1 of 1 workers"),
        (
            ["hardware.placement=split", "hardware.devices_per_node=4", "hardware.rollout_devices=1"],
            "do not split evenly over 3 training workers",
        ),
        (["trainer.mode=offline"], "trainer.mode"),
        (["hardware.weight_transfer=collective"], "hardware.placement=colocated"),
        (
            [
                "hardware.weight_transfer=collective",
                "hardware.placement=split",
                "hardware.device=npu",
                "hardware.devices_per_node=2",
            ],
            "no backend on npu",
        ),
        (["hardware.weight_transfer=nccl"], "hardware.weight_transfer"),
        (["trainer.partial_rollouts=continue"], "trainer.mode=sync with hardware.placement=colocated never"),
        (
            ["trainer.partial_rollouts=continue", "trainer.mode=async"],
            "trainer.mode=async with hardware.placement=colocated never",
        ),
        (
            ["trainer.partial_rollouts=continue", "trainer.mode=one_step_off", *SPLIT],
            "trainer.mode=one_step_off with hardware.placement=split never",
        ),
        (
            [
                "trainer.partial_rollouts=continue",
                "trainer.mode=async",
                *SPLIT,
                "rollout.multi_turn.enable=true",
            ],
            "not built for multi-turn rollouts",
        ),
        (
            [
                "trainer.partial_rollouts=continue",
                "trainer.mode=async",
                *SPLIT,
                "hardware.weight_transfer=collective",
            ],
            "takes the weights through Ray's object store",
        ),
    ],
)
def test_broken_rule_is_one_line(overrides: list[str], needle: str) -> None:
    with pytest.raises(UserError) as err:
        load_config("grpo", overrides=overrides)
    assert needle in err.value.message and "\n" not in err.value.message and err.value.hint


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["sft.prompt_key=question"], "set both, or neither"),
        (["data.synthetic=countdown"], "no reference answers for data.synthetic=countdown"),
    ],
)
def test_broken_sft_rule_is_one_line(overrides: list[str], needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        load_config("sft", overrides=overrides, command="sft")


def test_rules_that_hold() -> None:
    load_config("grpo", overrides=["hardware.devices_per_node=2", "trainer.total_steps=1"])
    load_config("ppo", overrides=["data.batch_size=4", "actor.mini_batch_size=2"])
    load_config("spin", overrides=["data.batch_size=6"])  # mini_batch_size follows ${data.batch_size}
    load_config("grpo", overrides=["model.lora_rank=8"])  # LoRA trains the RL actor's adapters
    # SFT uses neither mini-batches nor rewards: their rules do not apply to it
    load_config("sft", overrides=["data.batch_size=10"], command="sft")
    load_config("sft", overrides=["model.lora_rank=4"], command="sft")  # LoRA is an SFT feature


def test_scalar_for_a_list_key_is_a_one_element_list(tmp_path: Path) -> None:
    cfg = load_config("grpo", overrides=["data.train_files=a.parquet", "data.val_files=[b.parquet]"])
    assert list(cfg.data.train_files) == ["a.parquet"] and list(cfg.data.val_files) == ["b.parquet"]
    user = tmp_path / "u.yaml"
    user.write_text("data:\n  train_files: c.parquet\ntrainer:\n  loggers: jsonl\n")
    cfg = load_config("grpo", config_file=str(user))
    assert list(cfg.data.train_files) == ["c.parquet"] and list(cfg.trainer.loggers) == ["jsonl"]
    parent = tmp_path / "parent.yaml"
    parent.write_text("defaults:\n  - rlkit_schema\n  - _self_\ndata:\n  train_files: d.parquet\n")
    child = tmp_path / "child.yaml"
    child.write_text("defaults:\n  - parent\n  - _self_\ndata:\n  val_files: e.parquet\n")
    cfg = load_config(str(child))
    assert list(cfg.data.train_files) == ["d.parquet"] and list(cfg.data.val_files) == ["e.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.yaml", "parent.yaml", "u.yaml"]


def test_unresolvable_interpolation_is_one_line() -> None:
    with pytest.raises(UserError, match=r"rollout.n: cannot resolve its value: .*'nope'"):
        load_config("grpo", overrides=["rollout.n=${nope}"])


def test_hardware_profile_is_recorded_not_set() -> None:
    with pytest.raises(UserError, match="hardware.profile records the profile") as err:
        load_config("grpo", overrides=["hardware.profile=h100x8"])
    assert "--profile" in (err.value.hint or "")


def test_origins_follow_the_order_of_sources(tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("actor:\n  micro_batch_tokens: 2048\n")
    origins: dict[str, str] = {}
    cfg = load_config("dapo", profile=str(profile), overrides=["actor.lr=3e-6"], origins=origins)
    assert origins["actor.micro_batch_tokens"] == f"profile {profile}"
    assert origins["actor.lr"] == "override actor.lr=3e-6" and cfg.actor.lr == 3e-6
    assert origins["actor.clip_ratio_high"] == "recipe dapo.yaml"
    assert origins["data.batch_size"] == "recipe grpo.yaml"  # dapo's parent
    assert origins["reward.overlong.buffer_len"] == "recipe dapo.yaml, builtin_or (built-in model value)"
    assert origins["rollout.top_p"] == "schema default"
    assert origins["hardware.profile"] == "set by rlkit" and cfg.hardware.profile == str(profile)
    assert load_config("grpo").hardware.profile is None  # no profile given to load_config itself
    auto = load_config("grpo", default_profile="cpu", origins=origins)
    assert auto.hardware.profile == "cpu" and origins["model.dtype"] == "profile cpu, picked: no GPU found"


def test_real_model_gets_the_schema_defaults(tmp_path: Path) -> None:
    for recipe in ("grpo", "ppo", "sppo"):  # the three roots (dapo and the presets inherit grpo's values)
        tiny = load_config(recipe)
        real = load_config(recipe, overrides=[f"model.path={tmp_path}"])
        assert (tiny.data.max_prompt_length, tiny.data.max_response_length) == (128, 32), recipe
        assert (real.data.max_prompt_length, real.data.max_response_length) == (512, 512), recipe
        assert real.actor.lr == 1e-6 and tiny.actor.lr > 1e-6, recipe
    assert load_config("ppo", overrides=[f"model.path={tmp_path}"]).critic.lr == 1e-5
    assert load_config("dapo", overrides=[f"model.path={tmp_path}"]).reward.overlong.buffer_len == 100


def test_bypass_mode_is_refused_where_the_old_log_prob_pass_is_needed() -> None:
    with pytest.raises(UserError, match="rollout_is needs the recomputed old log-probs"):
        load_config(
            "grpo", overrides=["actor.old_log_probs=rollout", "algo.rollout_correction.rollout_is=token"]
        )
    with pytest.raises(UserError, match="optimal_token_baseline needs the old-log-prob pass"):
        load_config("otb", overrides=["actor.old_log_probs=rollout"])
    assert load_config("otb").actor.old_log_probs == "recompute"
    assert load_config("grpo").actor.old_log_probs == "rollout"  # the built-in model's value
    assert load_config("grpo", overrides=["model.path=/some/real/model"]).actor.old_log_probs == "auto"


def test_rollout_correction_auto_is_on_only_where_rollouts_are_off_policy() -> None:
    from rlkit.config.compose import to_dataclass
    from rlkit.trainer.algo_inputs import rollout_is_level

    def level(*overrides: str) -> str:
        return rollout_is_level(to_dataclass(load_config("grpo", overrides=list(overrides))))

    real = "model.path=/some/real/model"  # its old log-probs are recomputed
    assert level(real) == "none"
    assert level(real, "trainer.mode=one_step_off") == "token"
    assert level(real, "trainer.mode=async", "algo.rollout_correction.rollout_is=sequence") == "sequence"
    # bypass mode: the ratio already divides by the rollout's log-probs
    assert level("trainer.mode=async") == "none"


def test_partial_rollouts_compose_with_async_on_split_pools() -> None:
    cfg = load_config("grpo", overrides=["trainer.partial_rollouts=continue", "trainer.mode=async", *SPLIT])
    assert cfg.trainer.partial_rollouts == "continue"
    assert load_config("grpo").trainer.partial_rollouts == "finish"
