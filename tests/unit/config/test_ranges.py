"""Every numeric key declares its range in the schema; a value outside it fails at compose time."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from rlkit.config.fields import FieldInfo, schema_fields
from rlkit.config.load import load_config
from rlkit.config.ranges import check_ranges, example_value, in_range
from rlkit.errors import UserError

NUMERIC = {k: i for k, i in schema_fields().items() if i.numeric}


def _outside(info: FieldInfo) -> float | None:
    """A value just outside the declared range (None when the range has no edge to step over)."""
    b = info.bounds
    step = 1 if "int" in info.type_name else 0.5
    for value in (
        b.get("ge", b.get("gt", 0)) - step if ("ge" in b or "gt" in b) else None,
        b["gt"] if "gt" in b else None,
        b.get("le", b.get("lt", 0)) + step if ("le" in b or "lt" in b) else None,
        b["lt"] if "lt" in b else None,
    ):
        if value is not None and not in_range(value, info):
            return value
    return None


def _typed(value: float, info: FieldInfo) -> str:
    text = str(int(value)) if "int" in info.type_name and float(value).is_integer() else repr(float(value))
    return f"[{text},{text}]" if info.type_name.startswith("list") else text


def test_every_numeric_key_declares_its_range() -> None:
    missing = [k for k, i in NUMERIC.items() if not (i.bounds or i.unbounded)]
    assert not missing, (
        f"declare these with bounded(...) (or unbounded(default, why)) in config/schema.py or the group modules it imports: {missing}"
    )
    assert len(NUMERIC) > 50  # the walk below really covers the schema


def test_out_of_range_value_is_one_line_naming_the_key() -> None:
    """The walk over every bounded key, through the real load_config path (~0.2 s a key)."""
    for key, info in NUMERIC.items():
        if not info.bounds:
            continue
        value = _outside(info)
        assert value is not None, f"{key}: no value outside {info.bounds}"
        with pytest.raises(UserError) as err:
            load_config("grpo", overrides=[f"{key}={_typed(value, info)}"])
        message = err.value.message
        assert message.startswith(f"{key}=") and "out of range" in message and "\n" not in message, message
        assert err.value.hint == f"e.g. {key}={example_value(info)}"


def test_the_suggested_examples_are_in_range() -> None:
    cfg = load_config("grpo")
    for key, info in NUMERIC.items():
        if info.bounds:
            OmegaConf.update(cfg, key, yaml.safe_load(example_value(info)), merge=False)
    check_ranges(cfg, schema_fields())


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("actor.lr=-1", "actor.lr=-1 is out of range: it must be > 0"),
        ("rollout.temperature=-1", "rollout.temperature=-1 is out of range: it must be >= 0"),
        ("rollout.top_p=2", "rollout.top_p=2 is out of range: it must be in (0, 1]"),
        ("rollout.top_k=0", "rollout.top_k=0 is out of range: it must be -1 or >= 1"),
        ("data.max_response_length=0", "data.max_response_length=0 is out of range: it must be >= 1"),
        ("rollout.n=0", "rollout.n=0 is out of range: it must be >= 1"),
        ("trainer.save_every=-3", "trainer.save_every=-3 is out of range: it must be >= 0"),
        ("algo.gamma=5", "algo.gamma=5 is out of range: it must be in [0, 1]"),
        ("actor.clip_ratio_c=1", "actor.clip_ratio_c=1 is out of range: it must be > 1"),
        ("actor.betas=[0.9,1.5]", "actor.betas=[0.9,1.5] is out of range: each element must be in [0, 1)"),
    ],
)
def test_user_reported_values(override: str, expected: str) -> None:
    with pytest.raises(UserError) as err:
        load_config("grpo", overrides=[override])
    assert err.value.message == expected


def test_special_values_none_and_ranges_from_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config("grpo", overrides=["rollout.top_k=-1", "hardware.memory_per_device_gb=null"])
    assert cfg.rollout.top_k == -1 and cfg.hardware.memory_per_device_gb is None
    user = tmp_path / "u.yaml"
    user.write_text("rollout:\n  top_p: 0\n")
    with pytest.raises(UserError, match=r"rollout.top_p=0 is out of range"):
        load_config("grpo", config_file=str(user))
    profile = tmp_path / "p.yaml"
    profile.write_text("rollout:\n  gpu_memory_utilization: 1.5\n")
    with pytest.raises(UserError, match=r"rollout.gpu_memory_utilization=1.5 is out of range"):
        load_config("grpo", profile=str(profile))
