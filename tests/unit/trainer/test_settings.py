"""Config keys -> role settings: the compile switch (accelerators only), the rollout memory fraction
and engine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config
from rlkit.config.schema import RlkitConfig
from rlkit.errors import UserError
from rlkit.trainer.settings import actor_settings, critic_settings, ref_settings, rollout_settings
from rlkit.trainer.sft import sft_settings


def _cfg(*overrides: str) -> RlkitConfig:
    return to_dataclass(load_config("grpo", overrides=list(overrides)))


def test_torch_compile_is_on_for_accelerators_and_off_on_cpu() -> None:
    cfg = _cfg()
    for settings in (actor_settings, ref_settings, critic_settings, sft_settings):
        assert settings(cfg, "cuda")["torch_compile"] is True
        assert settings(cfg, "cpu")["torch_compile"] is False


def test_torch_compile_can_be_switched_off() -> None:
    cfg = _cfg("model.torch_compile=false")
    assert actor_settings(cfg, "cuda")["torch_compile"] is False
    assert sft_settings(cfg, "cuda")["torch_compile"] is False


def test_gpu_memory_utilization_reaches_the_rollout_engine_as_a_fraction() -> None:
    assert rollout_settings(_cfg("rollout.gpu_memory_utilization=1"), "cuda")["gpu_memory_utilization"] == 1.0
    assert isinstance(
        rollout_settings(_cfg("rollout.gpu_memory_utilization=1"), "cuda")["gpu_memory_utilization"], float
    )


def test_gpu_memory_utilization_out_of_range_is_a_user_error() -> None:
    with pytest.raises(UserError, match="gpu_memory_utilization"):
        rollout_settings(_cfg("rollout.gpu_memory_utilization=1.5"), "cuda")


def test_rollout_engine_is_resolved_before_the_workers_are_built(tmp_path: Path) -> None:
    from rlkit.models.tiny_foreign import save_tiny_foreign
    from rlkit.trainer.settings import resolve_rollout_engine

    cfg = _cfg()
    assert cfg.rollout.engine == "auto"
    assert resolve_rollout_engine(cfg) == "native" and cfg.rollout.engine == "native"
    assert rollout_settings(cfg, "cpu")["engine"] == "native"
    folder = save_tiny_foreign("mistral", tmp_path / "mistral")
    assert resolve_rollout_engine(_cfg(f"model.path={folder}")) == "hf"
    assert resolve_rollout_engine(_cfg(f"model.path={folder}", "rollout.engine=hf")) == "hf"
    with pytest.raises(UserError, match="rollout.engine=native cannot run"):
        resolve_rollout_engine(_cfg(f"model.path={folder}", "rollout.engine=native"))
    with pytest.raises(UserError, match="rollout.engine"):
        _cfg("rollout.engine=sglang")  # not an engine rlkit has
    # the rollout worker exports a built-in model to a folder for the engines that load one themselves
    if importlib.util.find_spec("vllm") is not None:
        assert resolve_rollout_engine(_cfg("rollout.engine=vllm")) == "vllm"
    else:
        with pytest.raises(UserError, match="rollout.engine=vllm needs a package that is not installed"):
            resolve_rollout_engine(_cfg("rollout.engine=vllm"))
    vllm = rollout_settings(_cfg("rollout.engine=vllm", "rollout.vllm.bucket_mb=8"), "cpu")
    assert vllm["options"] == {"kv_cache_gib": 1, "enable_sleep_mode": True, "bucket_mb": 8}
    assert rollout_settings(_cfg(), "cpu")["options"] is None  # native has no group of its own


def test_a_lora_actor_is_its_own_reference_unless_the_reference_refreshes() -> None:
    from rlkit.trainer.settings import ref_is_actor_base

    cfg = _cfg("model.lora_rank=8", "model.lora_alpha=32", "model.lora_target_modules=[q_proj,v_proj]")
    settings = actor_settings(cfg, "cpu")
    assert (settings["lora_rank"], settings["lora_alpha"]) == (8, 32)
    assert settings["lora_target_modules"] == ["q_proj", "v_proj"]
    assert ref_is_actor_base(cfg)  # its base under the adapters: no second model
    assert not ref_is_actor_base(_cfg("model.lora_rank=8", "ref.update_every=2"))  # refreshed: a model
    assert not ref_is_actor_base(_cfg()) and actor_settings(_cfg(), "cpu")["lora_rank"] == 0
