"""``rlkit plan``: batch math, placement and the memory estimate, checked against measured peaks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config
from rlkit.models import load_hf_config
from rlkit.models import memory as mem
from rlkit.models.logprobs import TORCH_CHUNK_TOKENS
from rlkit.trainer.plan import plan, render

# Qwen2.5-0.5B's config.json, the sizes that matter (the real one has 494M parameters).
QWEN_0_5B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
}


def _plan(*overrides: str, profile_name: str | None = None):  # type: ignore[no-untyped-def]
    return plan(to_dataclass(load_config("grpo", profile=profile_name, overrides=list(overrides))))


def test_batch_math_and_placement_over_two_nodes() -> None:
    result = _plan(
        "hardware.device=cpu",
        "hardware.nodes=2",
        "hardware.devices_per_node=2",
        "data.batch_size=8",
        "rollout.n=4",
        "actor.mini_batch_size=4",
        "actor.epochs=2",
        "data.max_prompt_length=100",
        "data.max_response_length=156",
        "actor.micro_batch_tokens=1024",
    )
    b = result.batch
    assert (b.prompts, b.samples, b.world, b.samples_per_device) == (8, 32, 4, 8)
    assert (b.mini_batches, b.optimizer_steps, b.rows_per_mini_batch_per_device) == (2, 4, 4)
    assert (b.max_tokens_per_sample, b.micro_batches_per_mini_batch, b.tokens_per_micro_batch) == (
        256,
        1,
        1024,
    )
    assert result.placement == [
        "node 0: 2 worker processes -> ranks 0-1, each hosting actor, rollout",
        "node 1: 2 worker processes -> ranks 2-3, each hosting actor, rollout",
    ]
    text = render(result)
    assert "32 samples; 8 per device over 4" in text and "4 optimizer step(s) per RL step" in text


def test_a_phase_that_does_not_fit_names_the_keys_that_fix_it(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(QWEN_0_5B))
    model = f"model.path={tmp_path}"
    roomy = _plan(model, profile_name="h100x1")
    assert roomy.warnings == [] and "494.0M parameters, bfloat16 compute" in roomy.notes[0]
    tight = _plan(
        model, "hardware.memory_per_device_gb=10", "model.gradient_checkpointing=false", profile_name="h100x1"
    )
    (warning,) = [w for w in tight.warnings if w.startswith("actor update needs")]
    assert "more than the 10 GiB of hardware.memory_per_device_gb" in warning
    assert "model.gradient_checkpointing=true" in warning and "actor.micro_batch_tokens" in warning
    names = [p.phase for p in tight.phases]
    assert names == [
        "rollout",
        "log-probs",
        "actor update",
        "actor update with model.gradient_checkpointing=true",
    ]
    assert tight.phases[3].total < tight.phases[2].total


def test_plan_command_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", init)
    result = CliRunner().invoke(app, ["plan", "grpo", "hardware.device=cpu"])
    assert result.exit_code == 0, result.output
    for heading in ("batch (per RL step)", "placement", "memory per device (estimate)", "actor update"):
        assert heading in result.output
    assert "KV cache (256 slots)" in result.output


def test_the_update_phase_is_the_peak_moment_of_a_micro_batch_over_the_resident_state() -> None:
    """The planner's update phase is the training state plus :func:`rlkit.models.memory.update_peak`
    of the micro-batch it plans (its measured agreement: tests/unit/models/test_memory.py)."""
    result = _plan("hardware.device=cpu", "model.gradient_checkpointing=true")
    shape = mem.ModelShape.from_hf(load_hf_config("builtin:tiny-arith"))
    b = result.batch
    step = mem.MicroBatchPass(
        b.tokens_per_micro_batch,
        4,
        True,
        TORCH_CHUNK_TOKENS,
        grads_resident=b.micro_batches_per_mini_batch > 1,
    )
    moment, parts = mem.update_peak(shape, step)
    update = result.phases[2]
    assert update.phase == "actor update (checkpointed)" and update.at == moment
    assert update.parts["actor weights"] == shape.num_params * 4
    assert update.parts["actor optimizer"] == shape.num_params * 8
    assert update.total == shape.num_params * (4 + 8 + 4) + sum(parts.values())  # + the rollout's copy
    assert f"at {moment}:" in render(result)


def test_a_megatron_actor_is_told_the_estimate_models_the_fsdp_engine(tmp_path: Path) -> None:
    """``rlkit plan`` composes without starting anything, so a Megatron run is planned on any machine;
    its estimate follows the FSDP engine's passes, and the plan says so rather than implying more."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN_0_5B))
    result = _plan(f"model.path={tmp_path}", "actor.strategy=megatron", profile_name="h100x1")
    (note,) = [n for n in result.notes if "strategy=megatron" in n]
    assert note.startswith("actor.strategy=megatron: the memory estimate models the FSDP engine")
    assert "memory/update_peak_gib" in note and "note: actor.strategy=megatron" in render(result)


def _qwen(folder: Path, **sizes: object) -> str:
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**QWEN_0_5B, **sizes}))
    return f"model.path={folder}"


def test_null_checkpointing_is_off_where_the_update_fits_and_on_where_it_does_not(tmp_path: Path) -> None:
    """The one-GPU profiles leave ``model.gradient_checkpointing`` null: the plan sizes the update."""
    from rlkit.trainer.plan import checkpointing_choice, resolve_checkpointing

    def choice(model: str, *overrides: str) -> tuple[bool, str]:
        cfg = to_dataclass(load_config("grpo", profile="h200x1", overrides=[model, *overrides]))
        return checkpointing_choice(cfg, "cuda")

    small = _qwen(tmp_path / "small")  # Qwen2.5-0.5B: ~57 GiB without checkpointing here
    wide = _qwen(tmp_path / "wide", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28)
    off, why = choice(small)
    assert (
        not off and why.startswith("the update needs ~") and why.endswith(" of 141 GiB per device without it")
    )
    on, why = choice(wide)
    assert on and why.startswith("the update would need ~") and "more than 75% of 141 GiB" in why
    assert choice(small, "hardware.memory_per_device_gb=40")[0]  # the same model on a smaller card
    assert choice(small, "actor.strategy=megatron") == (
        True,
        "the memory estimate does not model the Megatron engine",
    )
    assert choice(small, "model.gradient_checkpointing=true") == (True, "set")
    gemma = _qwen(tmp_path / "gemma", model_type="gemma", architectures=["GemmaForCausalLM"])
    assert choice(gemma)[0] and "not this architecture's transformers modules" in choice(gemma)[1]
    cpu = to_dataclass(load_config("grpo", overrides=[small, "model.gradient_checkpointing=null"]))
    assert checkpointing_choice(cpu) == (False, "no hardware.memory_per_device_gb to size the update against")
    cfg = to_dataclass(load_config("grpo", profile="h200x1", overrides=[small, "hardware.device=cuda"]))
    assert cfg.model.gradient_checkpointing is None
    assert resolve_checkpointing(cfg) is False and cfg.model.gradient_checkpointing is False
    notes = plan(to_dataclass(load_config("grpo", profile="h200x1", overrides=[wide]))).notes
    assert notes[1].startswith("model.gradient_checkpointing=null -> true: the update would need")
