"""The actor on the Megatron engine against the actor on FSDP (one process, CPU, fp32, gloo).

The same weights, batch and settings must give the same log-probs, losses, gradient norm and
updated weights on both engines (the Megatron actor runs the same micro-batch loop and losses),
an update must not depend on how the batch is cut, and a save / resume must be exact. Skips
without megatron-core; Megatron runs on the CPU through the test-only shims of ``megatron_cpu``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("megatron.core")

from rlkit.ckpt import load_role_state, save_role_state  # noqa: E402
from rlkit.training.actor import ActorRole  # noqa: E402

from ._builders import rl_batch  # noqa: E402
from .megatron_cpu import megatron_on_cpu, reset_megatron  # noqa: E402

pytestmark = pytest.mark.usefixtures("process_group")

P, R = 6, 5
PROMPTS = [6, 3, 5, 1, 4, 6, 2, 5]
RESPONSES = [5, 2, 4, 5, 1, 3, 5, 2]
LR = 1e-3
UPDATE = {"loss_agg_mode": "token-mean", "entropy_coeff": 0.01, "use_kl_loss": True, "kl_loss_coef": 0.1}


@pytest.fixture(autouse=True)
def megatron_cpu() -> Iterator[None]:
    with megatron_on_cpu():
        yield
    reset_megatron()


def _actor(path: Path, strategy: str = "megatron", **kw: object) -> ActorRole:
    settings: dict[str, object] = {
        "lr": LR,
        "total_steps": 10,
        "micro_batch_tokens": 64,
        "logprob_chunk_tokens": 7,
        "grad_clip": 0.5,
        "strategy": strategy,
    }
    settings.update(kw)
    return ActorRole(str(path), **settings)  # type: ignore[arg-type]


def _batch(seed: int = 1):
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=seed)
    batch.set("ref_log_prob", torch.zeros(len(batch), R) - 5.0)
    return batch


def _weights(actor: ActorRole) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in actor.named_full_tensors(torch.float32)}


def test_megatron_actor_equals_fsdp_actor(tiny_model_dir: Path) -> None:
    """Log-probs, entropies, the update's losses and gradient norm, and the updated weights."""
    batch = _batch()
    fsdp, megatron = _actor(tiny_model_dir, "fsdp"), _actor(tiny_model_dir)
    initial = _weights(megatron)
    assert initial.keys() == _weights(fsdp).keys()
    before_f, before_m = fsdp.compute_log_prob(batch), megatron.compute_log_prob(batch)
    for key in ("old_log_probs", "entropy"):
        torch.testing.assert_close(before_m[key], before_f[key], atol=1e-5, rtol=1e-5)
    batch.set("old_log_probs", before_f["old_log_probs"])
    metrics_f, metrics_m = fsdp.update(batch, **UPDATE), megatron.update(batch, **UPDATE)
    assert metrics_f["actor/grad_norm"] > 0.5  # the clip is active
    for key in ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/grad_norm", "actor/lr"):
        assert metrics_m[key] == pytest.approx(metrics_f[key], rel=1e-4, abs=1e-6), key
    after_f, after_m = _weights(fsdp), _weights(megatron)
    assert not torch.equal(
        after_m["model.layers.0.self_attn.q_proj.weight"], initial["model.layers.0.self_attn.q_proj.weight"]
    )
    for name, tensor in after_f.items():
        torch.testing.assert_close(after_m[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def test_update_does_not_depend_on_the_micro_batch_split(tiny_model_dir: Path) -> None:
    batch = _batch(seed=2)
    batch.set("old_log_probs", torch.zeros(len(batch), R) - 3.0)
    weights, metrics = [], []
    for budget in (11, 200):
        actor = _actor(tiny_model_dir, micro_batch_tokens=budget)
        metrics.append(actor.update(batch, **UPDATE))
        weights.append(_weights(actor))
    # The split only reorders fp32 sums: the losses and the gradient norm (which a wrong scale of
    # one micro-batch's loss would change) agree to rounding.
    for key in ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/grad_norm"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-5), key
    # AdamW's first step is lr * g / (|g| + eps) per element, so where a gradient is rounding noise
    # (the k-projection bias's is zero in exact arithmetic: softmax ignores a shift shared by all
    # keys) a reordered sum moves the step by up to noise / eps of lr (noise ~1e-10, eps 1e-8):
    # the weights agree to a few percent of one step, whatever the thread count.
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, atol=0.05 * LR, rtol=0.0, msg=name)


def test_save_and_resume_are_exact(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two updates straight equal one update, a checkpoint, a fresh actor resumed from it, one update."""
    first, second = _batch(seed=3), _batch(seed=4)
    straight = _actor(tiny_model_dir)
    straight.update(first, **UPDATE)
    straight.update(second, **UPDATE)
    expected = _weights(straight)

    interrupted = _actor(tiny_model_dir)
    interrupted.update(first, **UPDATE)
    save_role_state(interrupted, tmp_path / "actor")
    resumed = _actor(tiny_model_dir)
    assert load_role_state(resumed, tmp_path / "actor") is None
    assert resumed.engine.step_count == 1 and resumed.engine.lr() == interrupted.engine.lr()
    resumed.update(second, **UPDATE)
    for name, tensor in _weights(resumed).items():
        torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0, msg=name)


def test_export_writes_the_hugging_face_config(tiny_model_dir: Path) -> None:
    from rlkit.ckpt.state import role_hf_config
    from rlkit.models import load_hf_config

    actor = _actor(tiny_model_dir)
    hf = role_hf_config(actor)
    saved = load_hf_config(str(tiny_model_dir))
    assert {k: hf[k] for k in ("model_type", "num_hidden_layers", "vocab_size")} == {
        k: saved[k] for k in ("model_type", "num_hidden_layers", "vocab_size")
    }


def test_lora_needs_fsdp(tiny_model_dir: Path) -> None:
    from rlkit.errors import UserError

    with pytest.raises(UserError, match="lora_rank"):
        _actor(tiny_model_dir, lora_rank=4)


def test_checkpoint_tensors_convert_to_the_exported_weights(tiny_model_dir: Path) -> None:
    """``rlkit ckpt merge`` reads a Megatron checkpoint's model tensors through the converter."""
    from rlkit.training.megatron_convert import checkpoint_to_hf, is_megatron_checkpoint

    actor = _actor(tiny_model_dir)
    actor.update(_batch(seed=5), **UPDATE)
    model = actor.state_dict_for_checkpoint()["model"]
    assert is_megatron_checkpoint(list(model))
    merged = checkpoint_to_hf(model, actor.hf_config)
    exported = _weights(actor)
    assert merged.keys() == exported.keys()
    for name, tensor in exported.items():
        torch.testing.assert_close(merged[name], tensor, atol=0, rtol=0)


def test_activation_recompute_gives_the_same_update(tiny_model_dir: Path) -> None:
    batch = _batch(seed=6)
    batch.set("old_log_probs", torch.zeros(len(batch), R) - 3.0)
    weights = []
    for recompute in (False, True):
        actor = _actor(tiny_model_dir, gradient_checkpointing=recompute)
        actor.update(batch, **UPDATE)
        weights.append(_weights(actor))
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, atol=1e-6, rtol=1e-5, msg=name)


def test_a_layer_called_outside_autocast_still_computes_in_the_compute_dtype(tiny_model_dir: Path) -> None:
    # Megatron's activation recompute re-runs each layer in backward outside the first forward's
    # autocast; the engine's layers must compute in bf16 there too (in fp32 the recomputed layers
    # and their backward ran about 3x slower on a GPU). The recompute's backward itself needs CUDA
    # (Megatron restores autocast for CUDA only): tests/gpu/training/test_megatron_gpu.py runs it.
    actor = _actor(tiny_model_dir, gradient_checkpointing=True, dtype="bfloat16")
    gpt = actor.engine.module.gpt
    seen: list[torch.dtype] = []
    gpt.decoder.layers[0].mlp.linear_fc1.register_forward_hook(lambda _m, _i, out: seen.append(out[0].dtype))
    hidden_SBD = torch.randn(5, 2, gpt.config.hidden_size)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)[None, None]
    with torch.no_grad():
        gpt.decoder.layers[0](
            hidden_states=hidden_SBD, attention_mask=causal, rotary_pos_emb=gpt.rotary_pos_emb(5)
        )
    assert seen == [torch.bfloat16]


def test_config_builds_the_megatron_actor_and_its_export_is_the_same_policy(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``actor.strategy=megatron`` from a composed config -> the actor; what ActorWorker.export_hf writes
    (role_hf_config + the gathered HF-named weights) loads back as the same policy on FSDP."""
    from rlkit.ckpt.state import role_hf_config
    from rlkit.config.compose import to_dataclass
    from rlkit.config.load import load_config
    from rlkit.models import write_hf_folder
    from rlkit.trainer.settings import actor_settings

    cfg = to_dataclass(
        load_config(
            "grpo", overrides=["actor.strategy=megatron", f"model.path={tiny_model_dir}", "actor.lr=1e-3"]
        )
    )
    actor = ActorRole(**actor_settings(cfg, "cpu"))
    assert type(actor.engine).__name__ == "MegatronEngine"
    batch = _batch(seed=7)
    batch.set("old_log_probs", actor.compute_log_prob(batch)["old_log_probs"])
    actor.update(batch, **UPDATE)
    write_hf_folder(tmp_path / "hf", role_hf_config(actor), dict(actor.named_full_tensors(dtype=None)))
    exported = _actor(tmp_path / "hf", "fsdp")
    for key in ("old_log_probs", "entropy"):
        torch.testing.assert_close(
            exported.compute_log_prob(batch)[key], actor.compute_log_prob(batch)[key], atol=1e-5, rtol=1e-5
        )


def test_megatron_critic_equals_fsdp_critic(tiny_model_dir: Path) -> None:
    """``critic.strategy=megatron``: values, the value loss and grad norm, the updated weights, the merge."""
    from rlkit.training.critic import CriticRole
    from rlkit.training.megatron_convert import checkpoint_to_hf

    batch = _batch(seed=8)
    batch.set("returns", torch.linspace(-1.0, 1.0, len(batch))[:, None] * batch["response_mask"])
    critics = {
        s: CriticRole(str(tiny_model_dir), lr=1e-3, total_steps=10, micro_batch_tokens=30, strategy=s)
        for s in ("fsdp", "megatron")
    }
    values = {s: c.compute_values(batch)["values"] for s, c in critics.items()}
    torch.testing.assert_close(values["megatron"], values["fsdp"], atol=1e-5, rtol=1e-5)
    batch.set("values", values["fsdp"])
    metrics = {s: c.update(batch, cliprange_value=0.5) for s, c in critics.items()}
    for key in ("critic/vf_loss", "critic/grad_norm", "critic/vpred_mean"):
        assert metrics["megatron"][key] == pytest.approx(metrics["fsdp"][key], rel=1e-4, abs=1e-6), key
    weights = {s: dict(c.named_full_tensors(torch.float32)) for s, c in critics.items()}
    assert weights["megatron"].keys() == weights["fsdp"].keys() and "score.weight" in weights["fsdp"]
    for name, tensor in weights["fsdp"].items():
        torch.testing.assert_close(weights["megatron"][name], tensor, atol=1e-5, rtol=1e-4, msg=name)
    critic = critics["megatron"]
    merged = checkpoint_to_hf(critic.state_dict_for_checkpoint()["model"], critic.hf_config)
    for name, tensor in weights["megatron"].items():
        torch.testing.assert_close(merged[name], tensor, atol=0, rtol=0, msg=name)


def test_megatron_reference_equals_fsdp_reference_refreshes_and_checkpoints(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``ref.strategy=megatron``: the initial policy's log-probs as on FSDP; after ``load_weights``
    the actor's; a frozen checkpoint restores them."""
    from rlkit.training.ref import RefRole

    batch = _batch(seed=8)
    settings = {"micro_batch_tokens": 64, "logprob_chunk_tokens": 7}
    expected = RefRole(str(tiny_model_dir), **settings).compute_ref_log_prob(batch)["ref_log_prob"]
    ref = RefRole(str(tiny_model_dir), strategy="megatron", **settings)  # type: ignore[arg-type]
    torch.testing.assert_close(
        ref.compute_ref_log_prob(batch)["ref_log_prob"], expected, atol=1e-5, rtol=1e-5
    )

    actor = _actor(tiny_model_dir)
    batch.set("old_log_probs", torch.zeros(len(batch), R) - 3.0)
    actor.update(batch, **UPDATE)
    ref.load_weights(actor.named_full_tensors(torch.float32))
    moved = actor.compute_log_prob(batch)["old_log_probs"]
    torch.testing.assert_close(ref.compute_ref_log_prob(batch)["ref_log_prob"], moved, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(moved, expected, atol=1e-4)

    ref.save_frozen(tmp_path / "ref")
    restored = RefRole(str(tiny_model_dir), strategy="megatron", **settings)  # type: ignore[arg-type]
    assert restored.load_frozen(tmp_path / "ref") is None
    torch.testing.assert_close(restored.compute_ref_log_prob(batch)["ref_log_prob"], moved, atol=0, rtol=0)
