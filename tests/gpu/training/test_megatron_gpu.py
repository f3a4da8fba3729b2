"""The Megatron-core engine on one GPU, unpatched: against FSDP, a GRPO run, resume, export, Qwen3-MoE.

Run on the GPU machine (Python 3.12, megatron-core 0.19, no transformer-engine, no apex) in one go:

    pytest -m gpu tests/gpu/training/test_megatron_gpu.py -v

Skips without a GPU or without megatron-core.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlkit.data.batch import Batch
from rlkit.hardware import device as hw

pytest.importorskip("megatron.core")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(hw.device_type() == "cpu", reason="needs a GPU"),
]


def _batch(vocab: int, rows: int = 8, prompt: int = 64, response: int = 192, seed: int = 0) -> Batch:
    """Left-padded prompts and right-padded responses of varied lengths, advantages of both signs."""
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.zeros(rows, prompt, dtype=torch.long)
    responses = torch.zeros(rows, response, dtype=torch.long)
    for i in range(rows):
        pl = int(torch.randint(prompt // 2, prompt + 1, (1,), generator=gen))
        rl = int(torch.randint(response // 4, response + 1, (1,), generator=gen))
        prompts[i, prompt - pl :] = torch.randint(3, vocab, (pl,), generator=gen)
        responses[i, :rl] = torch.randint(3, vocab, (rl,), generator=gen)
    attention_mask = torch.cat([prompts != 0, responses != 0], dim=1).long()
    response_mask = (responses != 0).float()
    return Batch(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "response_mask": response_mask,
            "advantages": torch.randn(rows, 1, generator=gen) * response_mask,
        },
        meta={"temperature": 1.0},
    )


@pytest.fixture(scope="module")
def qwen_05b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen2.5-0.5B-shaped folder (config.json only: both engines build the same seeded random weights)."""
    from rlkit.models.shapes import QWEN25_05B

    out = tmp_path_factory.mktemp("qwen05b")
    (out / "config.json").write_text(json.dumps(QWEN25_05B.to_hf()))
    return out


def _actor(path: Path, strategy: str, **kw: object):  # noqa: ANN202
    from rlkit.training.actor import ActorRole

    settings: dict[str, object] = {
        "init": "random",
        "lr": 1e-5,
        "total_steps": 10,
        "micro_batch_tokens": 4096,
        "strategy": strategy,
        "torch_compile": False,
    }
    settings.update(kw)
    return ActorRole(str(path), **settings)  # type: ignore[arg-type]


def test_megatron_matches_fsdp_on_the_05b_shape_in_bf16(qwen_05b: Path) -> None:
    """Log-probs, the loss and the gradient norm on the same batch and weights, within bf16 rounding."""
    batch = _batch(151936)
    mask = batch["response_mask"].bool()
    fsdp = _actor(qwen_05b, "fsdp")
    expected = fsdp.compute_log_prob(batch)
    batch.set("old_log_probs", expected["old_log_probs"])
    metrics_f = fsdp.update(batch)
    del fsdp
    hw.empty_cache()
    megatron = _actor(qwen_05b, "megatron")
    assert megatron.engine.compute_dtype == torch.bfloat16 and megatron.engine.device.type == "cuda"
    got = megatron.compute_log_prob(batch)
    diff = (got["old_log_probs"] - expected["old_log_probs"])[mask].abs()
    print(f"log-prob |diff|: mean {diff.mean():.4f}, max {diff.max():.4f}")
    assert diff.mean() < 0.02 and diff.max() < 0.5
    ent = (got["entropy"] - expected["entropy"])[mask].abs()
    assert ent.mean() < 0.05
    metrics_m = megatron.update(batch)
    print({k: (metrics_f[k], metrics_m[k]) for k in ("actor/pg_loss", "actor/grad_norm")})
    assert metrics_m["actor/pg_loss"] == pytest.approx(metrics_f["actor/pg_loss"], abs=2e-3)
    assert metrics_m["actor/grad_norm"] == pytest.approx(metrics_f["actor/grad_norm"], rel=0.03)


def test_activation_recompute_computes_in_bf16(qwen_05b: Path) -> None:
    """Megatron's recompute re-runs each layer in backward: in bf16 like the first forward, not fp32."""
    megatron = _actor(qwen_05b, "megatron", gradient_checkpointing=True)
    seen: list[torch.dtype] = []
    fc1 = megatron.engine.module.gpt.decoder.layers[0].mlp.linear_fc1
    fc1.register_forward_hook(lambda _m, _i, out: seen.append(out[0].dtype))
    megatron.update(_batch(151936, seed=3))
    assert len(seen) >= 2 and len(seen) % 2 == 0  # the forward of each micro-batch and its recompute
    assert set(seen) == {torch.bfloat16}


def test_save_resume_is_exact_and_export_equals_the_weights(qwen_05b: Path, tmp_path: Path) -> None:
    """A resumed actor holds exactly the saved weights, Adam moments, step and rate; the next update
    matches the uninterrupted actor's; the merged checkpoint equals the exported weights."""
    from rlkit.ckpt import load_role_state, save_role_state
    from rlkit.training.megatron_convert import checkpoint_to_hf

    first, second = _batch(151936, seed=1), _batch(151936, seed=2)
    interrupted = _actor(qwen_05b, "megatron")
    interrupted.update(first)
    save_role_state(interrupted, tmp_path / "actor")
    saved = interrupted.state_dict_for_checkpoint()
    merged = checkpoint_to_hf({k: v.cpu() for k, v in saved["model"].items()}, interrupted.hf_config)
    for name, tensor in interrupted.named_full_tensors(torch.float32):
        assert torch.equal(merged[name], tensor.cpu()), name
    resumed = _actor(qwen_05b, "megatron")
    assert load_role_state(resumed, tmp_path / "actor") is None
    restored = resumed.state_dict_for_checkpoint()
    for key, tensor in saved["model"].items():
        assert torch.equal(restored["model"][key], tensor), key
    for key, state in saved["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(restored["optimizer"]["state"][key][name], value), (key, name)
    assert resumed.engine.step_count == 1 and resumed.engine.lr() == interrupted.engine.lr()
    interrupted.update(second)
    resumed.update(second)
    after = dict(interrupted.named_full_tensors(torch.float32))
    worst = max((t - after[n]).abs().max().item() for n, t in resumed.named_full_tensors(torch.float32))
    print(f"one update after the resume: largest weight difference {worst:.3g}")
    # GPU reductions (the embedding's backward) are not bitwise deterministic; an Adam step moves
    # a weight by about lr, so run-to-run noise stays within a few lr where a gradient is ~0
    assert worst <= 2.5e-5


def test_grpo_run_with_the_megatron_actor_trains(ray_session: None, tmp_path: Path) -> None:
    """`rlkit train grpo actor.strategy=megatron`: the embedded default learns as the FSDP actor must.

    The same check as tests/e2e/test_embedded_default_learns.py (300 steps, the last fifth's mean
    reward beats the first fifth's by 0.2), then ``rlkit ckpt merge --verify`` of its checkpoint.
    """
    from typer.testing import CliRunner

    from rlkit.cli.app import app

    out = tmp_path / "run"
    args = ["train", "grpo", "actor.strategy=megatron", "trainer.total_steps=300", "trainer.save_every=300"]
    result = CliRunner().invoke(app, [*args, f"trainer.out_dir={out}"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/mean"] for r in rows if "reward/mean" in r]
    fifth = len(rewards) // 5
    first, last = sum(rewards[:fifth]) / fifth, sum(rewards[-fifth:]) / fifth
    print(f"megatron actor: {len(rewards)} steps, reward first fifth {first:.3f}, last fifth {last:.3f}")
    assert all(r["actor/grad_norm"] > 0 for r in rows if "actor/grad_norm" in r)
    assert last - first >= 0.2, f"first fifth {first:.3f}, last fifth {last:.3f}"
    step = out / "checkpoints" / "step_300"
    merged = CliRunner().invoke(app, ["ckpt", "merge", str(step), "--out", str(tmp_path / "hf"), "--verify"])
    assert merged.exit_code == 0, merged.output


def test_qwen3_moe_megatron_equals_transformers_in_fp32(tmp_path: Path) -> None:
    """A tiny Qwen3-MoE: the Megatron actor's log-probs equal the transformers model's (fp32), and it trains."""
    import transformers

    config = transformers.AutoConfig.for_model(
        model_type="qwen3_moe",
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    batch = _batch(320, rows=4, prompt=8, response=16)
    fsdp = _actor(tmp_path, "fsdp", init="pretrained", dtype="float32")
    expected = fsdp.compute_log_prob(batch)["old_log_probs"]
    del fsdp
    megatron = _actor(tmp_path, "megatron", init="pretrained", dtype="float32")
    got = megatron.compute_log_prob(batch)["old_log_probs"]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    batch.set("old_log_probs", got)
    metrics = megatron.update(batch)
    assert metrics["actor/grad_norm"] > 0 and metrics["actor/skipped_steps"] == 0
    names = {name for name, _ in megatron.named_full_tensors(torch.float32)}
    assert (
        "model.layers.0.mlp.experts.3.down_proj.weight" in names and "model.layers.1.mlp.gate.weight" in names
    )


def test_ppo_run_with_megatron_actor_and_critic(ray_session: None, tmp_path: Path) -> None:
    """`rlkit train ppo` with every role on Megatron (actor, critic and the reference of a KL loss):
    three steps run, the roles' metrics finite."""
    import math

    from typer.testing import CliRunner

    from rlkit.cli.app import app

    out = tmp_path / "ppo"
    args = ["train", "ppo", "actor.strategy=megatron", "critic.strategy=megatron", "trainer.total_steps=3"]
    args += ["ref.strategy=megatron", "actor.use_kl_loss=true"]
    result = CliRunner().invoke(app, [*args, "trainer.val_every=0", f"trainer.out_dir={out}"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    for key in ("actor/grad_norm", "critic/grad_norm", "critic/vf_loss", "actor/pg_loss", "actor/kl_loss"):
        assert math.isfinite(last[key]) and (key.endswith("loss") or last[key] > 0), key
