"""Config composition: order of sources, validation errors, profile allow-list."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlkit.config.compose import Sources, compose_config, to_dataclass
from rlkit.config.fields import schema_fields
from rlkit.config.load import load_config
from rlkit.config.schema import RlkitConfig
from rlkit.errors import UserError
from rlkit.registry import recipes_dir


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_come_from_schema_and_recipe() -> None:
    cfg = to_dataclass(load_config("grpo"))
    assert isinstance(cfg, RlkitConfig)
    assert cfg.recipe == "grpo"
    assert cfg.algo.advantage == "grpo"
    assert cfg.trainer.experiment == "grpo"  # interpolation of ${recipe}
    assert to_dataclass(load_config("ppo")).algo.advantage == "gae"


def test_order_recipe_profile_file_overrides(tmp_path: Path) -> None:
    profile = write(tmp_path / "p.yaml", "actor:\n  micro_batch_tokens: 111\ndata:\n  batch_size: 48\n")
    user = write(tmp_path / "u.yaml", "data:\n  batch_size: 64\ntrainer:\n  total_steps: 3\n")
    cfg = load_config("grpo", profile=str(profile))
    assert (cfg.actor.micro_batch_tokens, cfg.data.batch_size) == (111, 48)
    cfg = load_config("grpo", profile=str(profile), config_file=str(user))
    assert (cfg.actor.micro_batch_tokens, cfg.data.batch_size, cfg.trainer.total_steps) == (111, 64, 3)
    cfg = load_config("grpo", profile=str(profile), config_file=str(user), overrides=["data.batch_size=16"])
    assert cfg.data.batch_size == 16 and cfg.trainer.total_steps == 3


def test_override_grammar_lists_and_null() -> None:
    cfg = load_config(
        "grpo", overrides=["actor.betas=[0.8,0.95]", "model.tokenizer=null", "data.train_files=[a.parquet]"]
    )
    assert list(cfg.actor.betas) == [0.8, 0.95]
    assert cfg.model.tokenizer is None
    assert list(cfg.data.train_files) == ["a.parquet"]


def test_unknown_key_did_you_mean() -> None:
    with pytest.raises(UserError) as err:
        load_config("grpo", overrides=["trainer.totl_steps=7"])
    assert "trainer.totl_steps" in err.value.message and err.value.hint == "did you mean trainer.total_steps?"


def test_unknown_key_in_config_file_names_the_file(tmp_path: Path) -> None:
    user = write(tmp_path / "u.yaml", "rollout:\n  temprature: 0.5\n")
    with pytest.raises(UserError) as err:
        load_config("grpo", config_file=str(user))
    assert str(user) in err.value.message and "rollout.temperature" in (err.value.hint or "")


def test_wrong_type_names_key_and_type() -> None:
    with pytest.raises(UserError) as err:
        load_config("grpo", overrides=["trainer.total_steps=abc"])
    assert "trainer.total_steps" in err.value.message and "int" in err.value.message


def test_bad_choice() -> None:
    with pytest.raises(UserError) as err:
        load_config("grpo", overrides=["algo.advantage=grpoo"])
    assert "algo.advantage" in err.value.message and "did you mean grpo" in (err.value.hint or "")


def test_group_and_add_syntax_rejected() -> None:
    for bad in ["trainer=3", "+trainer.x=1", "~trainer.seed", "novalue"]:
        with pytest.raises(UserError):
            load_config("grpo", overrides=[bad])


def test_profile_may_only_set_profile_keys(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "hardware:\n  device: cpu\nactor:\n  lr: 0.1\n")
    with pytest.raises(UserError) as err:
        load_config("grpo", profile=str(bad))
    assert "actor.lr" in err.value.message and "profile" in err.value.message


def test_missing_files_and_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown recipe"):
        load_config("nope")
    with pytest.raises(UserError, match="unknown profile"):
        load_config("grpo", profile="h100x999")
    with pytest.raises(UserError, match="config file not found"):
        load_config("grpo", config_file=str(tmp_path / "missing.yaml"))
    with pytest.raises(UserError, match="not valid YAML"):
        load_config("grpo", config_file=str(write(tmp_path / "x.yaml", "a: [b\n")))


def test_recipe_from_path_and_inheritance(tmp_path: Path) -> None:
    (tmp_path / "grpo.yaml").write_text((recipes_dir() / "grpo.yaml").read_text())
    child = write(tmp_path / "child.yaml", "defaults:\n  - grpo\n  - _self_\nrollout:\n  n: 3\n")
    cfg = load_config(str(child))
    assert cfg.recipe == "child" and cfg.rollout.n == 3 and cfg.algo.advantage == "grpo"


def test_every_field_is_documented_and_round_trips() -> None:
    fields = schema_fields()
    assert all(info.doc for info in fields.values()), [k for k, v in fields.items() if not v.doc]
    cfg = load_config("grpo")
    for key in fields:
        OmegaConf.select(cfg, key, throw_on_missing=True)


def test_compose_with_explicit_sources(tmp_path: Path) -> None:
    recipe = write(tmp_path / "r.yaml", "defaults:\n  - rlkit_schema\n  - _self_\ntrainer:\n  seed: 5\n")
    cfg = compose_config(Sources(recipe), "r")
    assert cfg.trainer.seed == 5 and cfg.recipe == "r"
