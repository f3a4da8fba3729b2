"""Hardware profiles: every one composes with every recipe, sets only profile keys, and says what it assumes."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.config.compose import to_dataclass
from rlkit.config.fields import schema_fields
from rlkit.config.load import load_config
from rlkit.config.schema import RlkitConfig
from rlkit.hardware.profiles import profile_values, summarize_profile, summarize_profiles
from rlkit.registry import RECIPES, Recipe, profile_names, profiles_dir
from rlkit.trainer.settings import num_mini_batches

EXPECTED = {"cpu", "h100x1", "h100x2", "h100x8", "h200x1", "h200x8", "a100x8", "mi300x8", "ascend910bx8"}
PROFILES = profile_names()


def test_every_expected_profile_ships() -> None:
    assert EXPECTED <= set(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_sets_only_profile_keys(name: str) -> None:
    fields = schema_fields()
    for key in profile_values(profiles_dir() / f"{name}.yaml"):
        assert key in fields, f"{name}: unknown key {key}"
        assert fields[key].profile, f"{name}: {key} is not a hardware/parallelism/batch/memory key"


@pytest.mark.parametrize("name", PROFILES)
def test_profile_states_its_assumptions(name: str) -> None:
    summary = summarize_profile(profiles_dir() / f"{name}.yaml")
    assert len(summary.assumes) > 40, f"{name} needs a comment header saying what it assumes"
    if summary.device != "cpu":
        # the memory check and the device count need both
        assert summary.memory_per_device_gb and summary.memory_per_device_gb > 0
        assert summary.devices_per_node >= 1
        assert summary.settings.get("model.dtype") == "bfloat16"


def _check_applied(name: str, obj: RlkitConfig) -> None:
    for key, value in profile_values(profiles_dir() / f"{name}.yaml").items():
        group, leaf = key.split(".")
        assert getattr(getattr(obj, group), leaf) == value, f"{name} did not set {key}"


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_composes_through_hydra(name: str) -> None:
    obj = to_dataclass(load_config("grpo", profile=name, command="train"))
    _check_applied(name, obj)
    assert num_mini_batches(obj) >= 1


@pytest.mark.parametrize("entry", RECIPES, ids=lambda r: r.name)
def test_every_profile_fits_every_recipe(entry: Recipe) -> None:
    # one Hydra compose per recipe, then each profile merged on top as compose does (fast)
    recipe_cfg = load_config(entry.name, command=entry.command)
    for name in PROFILES:
        merged = OmegaConf.merge(recipe_cfg, OmegaConf.load(profiles_dir() / f"{name}.yaml"))
        assert isinstance(merged, DictConfig)
        obj = to_dataclass(merged)
        _check_applied(name, obj)
        if entry.command == "train":
            # the profile's batch must divide into the recipe's mini-batches
            assert num_mini_batches(obj) >= 1, f"{name} x {entry.name}"


def test_summaries_sorted_cpu_first() -> None:
    names = [s.name for s in summarize_profiles(profiles_dir())]
    assert names[0] == "cpu" and set(names) == set(PROFILES)


def test_profiles_command_lists_every_profile() -> None:
    result = CliRunner().invoke(app, ["profiles"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in EXPECTED:
        assert name in result.output
    assert "141 GB" in result.output and "192 GB" in result.output


def test_profiles_details_show_keys() -> None:
    result = CliRunner().invoke(app, ["profiles", "--details"], env={"COLUMNS": "250"})
    assert result.exit_code == 0 and "actor.micro_batch_tokens" in result.output


def test_profile_with_a_non_profile_key_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("# sets a learning rate\nactor:\n  lr: 0.1\n")
    result = CliRunner().invoke(app, ["config", "grpo", "--profile", str(bad)])
    assert result.exit_code == 2
    assert "not a hardware, parallelism, batch or memory key" in result.output
