"""``actor.strategy`` and ``actor.megatron.*``: refused at compose time / preflight with one line and a fix."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config
from rlkit.errors import UserError
from rlkit.trainer import preflight as preflight_module
from rlkit.trainer.settings import actor_settings

HAS_MEGATRON = (
    importlib.util.find_spec("megatron") is not None and importlib.util.find_spec("megatron.core") is not None
)
needs_megatron = pytest.mark.skipif(not HAS_MEGATRON, reason="megatron-core is not installed")


def _refused(*overrides: str) -> UserError:
    with pytest.raises(UserError) as err:
        load_config("grpo", overrides=list(overrides))
    assert "\n" not in err.value.message and err.value.hint
    return err.value


def test_megatron_sizes_need_the_megatron_strategy() -> None:
    err = _refused("actor.megatron.tensor_parallel=2")
    assert "only applies to actor.strategy=megatron" in err.message and "actor.strategy=megatron" in str(
        err.hint
    )


def test_missing_megatron_core_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith("megatron") else real(name, *a)
    )
    err = _refused("actor.strategy=megatron")
    assert "needs megatron-core" in err.message
    assert 'pip install "rlkit[megatron]"' in str(err.hint) and "3.12" in str(err.hint)


@needs_megatron
@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ["actor.megatron.pipeline_parallel=2"],
            "actor.megatron.pipeline_parallel=2 does not divide the 1 training",
        ),
        (
            [
                "actor.megatron.tensor_parallel=2",
                "actor.megatron.pipeline_parallel=2",
                "hardware.devices_per_node=6",
                "data.batch_size=24",
                "actor.mini_batch_size=24",
            ],
            "tensor_parallel x pipeline_parallel x context_parallel = 4 does not divide the 6 training devices",
        ),
        (
            ["actor.megatron.virtual_pipeline=2"],
            "virtual_pipeline=2 needs actor.megatron.pipeline_parallel > 1",
        ),
        (
            ["actor.megatron.context_parallel=2"],
            "actor.megatron.context_parallel=2 does not divide the 1 training",
        ),
        (
            [
                "actor.megatron.tensor_parallel=2",
                "actor.megatron.context_parallel=2",
                "hardware.devices_per_node=6",
                "data.batch_size=24",
                "actor.mini_batch_size=24",
            ],
            "tensor_parallel x pipeline_parallel x context_parallel = 4 does not divide the 6 training devices",
        ),
        (
            ["actor.megatron.sequence_parallel=true"],
            "actor.megatron.sequence_parallel=true needs actor.megatron.tensor_parallel > 1",
        ),
        (
            ["actor.megatron.tensor_parallel=3", "hardware.devices_per_node=4"],
            "does not divide the 4 training devices",
        ),
        (
            ["actor.megatron.expert_parallel=2"],
            "actor.megatron.expert_parallel=2 does not divide the 1 training",
        ),
        (["model.lora_rank=8"], "model.lora_rank=8 needs actor.strategy=fsdp"),
        (
            [
                "actor.megatron.tensor_parallel=2",
                "hardware.devices_per_node=2",
                "algo.advantage=optimal_token_baseline",
                "actor.old_log_probs=recompute",
            ],
            "not built for actor.megatron.tensor_parallel > 1",
        ),
    ],
)
def test_megatron_rules(overrides: list[str], needle: str) -> None:
    assert needle in _refused("actor.strategy=megatron", *overrides).message


@needs_megatron
def test_the_reference_can_run_on_megatron_with_the_run_sizes() -> None:
    from rlkit.trainer.settings import ref_settings

    cfg = load_config("grpo", overrides=["ref.strategy=megatron", "actor.megatron.pipeline_parallel=1"])
    settings = ref_settings(to_dataclass(cfg), "cuda")
    assert settings["strategy"] == "megatron" and settings["megatron"]["pipeline_parallel"] == 1
    err = _refused("ref.strategy=megatron", "ref.param_offload=true")
    assert "ref.param_offload=true needs ref.strategy=fsdp" in err.message


@needs_megatron
def test_settings_carry_the_strategy_and_sizes() -> None:
    cfg = to_dataclass(
        load_config(
            "grpo",
            overrides=[
                "actor.strategy=megatron",
                "actor.megatron.tensor_parallel=2",
                "hardware.devices_per_node=2",
            ],
        )
    )
    settings = actor_settings(cfg, "cuda")
    assert settings["strategy"] == "megatron"
    assert settings["megatron"]["tensor_parallel"] == 2 and settings["megatron"]["pipeline_parallel"] == 1
    assert actor_settings(to_dataclass(load_config("grpo")), "cpu")["megatron"] is None


def _preflight(monkeypatch: pytest.MonkeyPatch, device: str, *overrides: str) -> list[str]:
    monkeypatch.setattr(preflight_module, "resolve_device", lambda cfg: device)
    cfg = to_dataclass(load_config("grpo", overrides=["actor.strategy=megatron", *overrides]))
    return [preflight_module._training_engine(cfg)]


@needs_megatron
def test_megatron_needs_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="needs a GPU, and this run's device is cpu") as err:
        _preflight(monkeypatch, "cpu")
    assert "actor.strategy=fsdp" in str(err.value.hint)


@needs_megatron
def test_model_shape_is_checked_against_the_sizes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hf = {
        "model_type": "qwen2",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 300,
    }
    (tmp_path / "config.json").write_text(json.dumps(hf))
    model = f"model.path={tmp_path}"
    lines = _preflight(
        monkeypatch, "cuda", model, "actor.megatron.tensor_parallel=2", "hardware.devices_per_node=2"
    )
    assert lines == [
        "training engine: Megatron-core for the actor, TP 2 x PP 1 x CP 1 x EP 1, data parallel 1"
    ]
    lines = _preflight(
        monkeypatch, "cuda", model, "actor.megatron.pipeline_parallel=2", "hardware.devices_per_node=4"
    )
    assert lines == [
        "training engine: Megatron-core for the actor, TP 1 x PP 2 x CP 1 x EP 1, data parallel 2"
    ]
    lines = _preflight(
        monkeypatch,
        "cuda",
        model,
        "actor.megatron.tensor_parallel=2",
        "actor.megatron.sequence_parallel=true",
        "actor.megatron.context_parallel=2",
        "hardware.devices_per_node=8",
    )
    assert lines == [
        "training engine: Megatron-core for the actor, TP 2 (sequence parallel) x PP 1 x CP 2 x EP 1, data parallel 2"
    ]
    with pytest.raises(
        UserError, match="pipeline_parallel=2 x virtual_pipeline=2 = 4 does not divide the model's 2 layers"
    ):
        _preflight(
            monkeypatch,
            "cuda",
            model,
            "actor.megatron.pipeline_parallel=2",
            "actor.megatron.virtual_pipeline=2",
            "hardware.devices_per_node=2",
        )
    with pytest.raises(UserError, match="pipeline_parallel=4 does not divide the model's 2 layers"):
        _preflight(
            monkeypatch, "cuda", model, "actor.megatron.pipeline_parallel=4", "hardware.devices_per_node=4"
        )
    with pytest.raises(UserError, match="tensor_parallel=4 does not divide the model's 6 attention heads"):
        _preflight(
            monkeypatch, "cuda", model, "actor.megatron.tensor_parallel=4", "hardware.devices_per_node=4"
        )
    with pytest.raises(UserError, match="expert_parallel=2 does not divide the model's no experts"):
        _preflight(
            monkeypatch, "cuda", model, "actor.megatron.expert_parallel=2", "hardware.devices_per_node=2"
        )
    (tmp_path / "config.json").write_text(json.dumps({**hf, "model_type": "gemma2"}))
    with pytest.raises(UserError, match="maps model_type"):
        _preflight(monkeypatch, "cuda", model)


@needs_megatron
def test_the_critic_can_train_on_megatron_with_the_run_sizes() -> None:
    from rlkit.trainer.settings import critic_settings

    cfg = to_dataclass(load_config("ppo", overrides=["critic.strategy=megatron"]))
    settings = critic_settings(cfg, "cuda")
    assert settings["strategy"] == "megatron" and settings["megatron"]["tensor_parallel"] == 1
    assert actor_settings(cfg, "cuda")["strategy"] == "fsdp"
    err = _refused("critic.strategy=megatron", "actor.megatron.context_parallel=2")
    assert "context_parallel=2 does not divide the 1 training devices" in err.message
