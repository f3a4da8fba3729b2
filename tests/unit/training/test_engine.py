"""FSDPEngine on one process (a plain module, no FSDP hooks): grad norm and clipping, skipped steps, full tensors, state."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rlkit.models import CausalLM, init_weights
from rlkit.training.engine import FSDPEngine, decoder_layers, resolve_dtype
from rlkit.training.heads import PackedPolicy
from rlkit.training.micro_batches import pack_rows

from ._builders import VOCAB, rl_batch, tiny_decoder_config

pytestmark = pytest.mark.usefixtures("process_group")

P, R = 5, 4


def _model(tied: bool = True, seed: int = 0) -> CausalLM:
    model = CausalLM(tiny_decoder_config(tied=tied))
    init_weights(model, seed=seed)
    return model


def _engine(model: CausalLM, **kw: object) -> FSDPEngine:
    settings: dict[str, object] = {"lr": 1e-2, "total_steps": 10}
    settings.update(kw)
    return FSDPEngine(PackedPolicy(model), **settings)  # type: ignore[arg-type]


def _packed_loss(module: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    batch = rl_batch([5, 2, 4], [4, 3, 1], P, R, seed=seed)
    mb = pack_rows(batch["input_ids"], batch["attention_mask"], None, R, [0, 1, 2])
    logp, _ = module(mb.input_ids_T, mb.position_ids_T, mb.cu_seqlens, mb.gather_idx_N, mb.labels_N)
    return -logp.sum()


def test_grad_norm_is_the_unsharded_norm_and_clipping_applies_it() -> None:
    plain = PackedPolicy(_model())
    _packed_loss(plain).backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in plain.parameters()]).item()

    engine = _engine(_model(), grad_clip=0.5)
    _packed_loss(engine.module).backward()
    assert engine.grad_norm() == pytest.approx(expected, rel=1e-5)
    assert expected > 0.5
    clipped: list[float] = []
    engine.optimizer.step = lambda *a, **k: clipped.append(engine.grad_norm())  # type: ignore[method-assign]
    norm, stepped = engine.optimizer_step()
    assert stepped and norm == pytest.approx(expected, rel=1e-5)
    assert clipped[0] == pytest.approx(0.5, rel=1e-4)


def test_non_finite_grad_norm_skips_the_step() -> None:
    engine = _engine(_model())
    before = {k: v.clone() for k, v in engine.named_full_tensors(torch.float32)}
    _packed_loss(engine.module).backward()
    next(iter(engine.params)).grad.fill_(float("nan"))  # type: ignore[union-attr]
    norm, stepped = engine.optimizer_step()
    assert math.isnan(norm) and not stepped
    assert engine.skipped_steps == 1 and engine.optimizer_steps == 0
    assert all(p.grad is None for p in engine.params)
    after = dict(engine.named_full_tensors(torch.float32))
    for name, value in before.items():
        assert torch.equal(value, after[name]), name


@pytest.mark.parametrize("tied", [True, False])
def test_named_full_tensors_have_hf_names_and_full_shapes(tied: bool) -> None:
    reference = _model(tied=tied)
    expected = {name: p.detach().clone() for name, p in reference.named_parameters()}
    engine = _engine(_model(tied=tied))
    got = dict(engine.named_full_tensors(torch.float32))
    assert list(got) == list(expected)
    assert ("lm_head.weight" in got) is (not tied)
    for name, value in expected.items():
        assert got[name].shape == value.shape
        torch.testing.assert_close(got[name], value, atol=0, rtol=0)
    bf16 = dict(engine.named_full_tensors())
    assert all(t.dtype == torch.bfloat16 for t in bf16.values())
    assert got["model.embed_tokens.weight"].shape == (VOCAB, 64)


def test_checkpoint_state_round_trip_restores_optimizer_and_schedule() -> None:
    a = _engine(_model(), warmup_steps=3, lr_schedule="cosine")
    for seed in range(2):
        _packed_loss(a.module, seed).backward()
        a.optimizer_step()
        a.scheduler_step()
    state = copy.deepcopy(a.state_dict_for_checkpoint())
    b = _engine(_model(seed=7), warmup_steps=3, lr_schedule="cosine")
    b.load_checkpoint_state(state)
    assert b.step_count == 2 and b.optimizer_steps == 2 and b.lr() == pytest.approx(a.lr())
    for engine in (a, b):  # one more identical step: equal only if Adam's moments came back too
        _packed_loss(engine.module, 5).backward()
        engine.optimizer_step()
    pa, pb = dict(a.named_full_tensors(torch.float32)), dict(b.named_full_tensors(torch.float32))
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], atol=0, rtol=0)


def _two_steps(engine: FSDPEngine) -> dict[str, object]:
    for seed in range(2):
        _packed_loss(engine.module, seed).backward()
        engine.optimizer_step()
        engine.scheduler_step()
    return copy.deepcopy(engine.state_dict_for_checkpoint())


def test_resume_applies_this_runs_lr_weight_decay_and_betas() -> None:
    """A resume with changed settings trains as an uninterrupted run whose settings changed at step 3."""
    old = {"lr": 1e-2, "weight_decay": 0.01, "betas": (0.9, 0.999)}
    new = {"lr": 5e-2, "weight_decay": 0.1, "betas": (0.8, 0.95)}
    resumed = _engine(_model(seed=7), **new)  # type: ignore[arg-type]
    resumed.load_checkpoint_state(_two_steps(_engine(_model(), **old)))  # type: ignore[arg-type]
    for group in resumed.optimizer.param_groups:
        assert (group["lr"], group["initial_lr"], group["weight_decay"]) == (5e-2, 5e-2, 0.1)
        assert tuple(group["betas"]) == (0.8, 0.95)
    assert resumed.lr() == 5e-2 and resumed.step_count == 2
    uninterrupted = _engine(_model(), **old)  # type: ignore[arg-type]
    _two_steps(uninterrupted)
    for group in uninterrupted.optimizer.param_groups:  # the settings change after step 2
        group.update(lr=5e-2, weight_decay=0.1, betas=(0.8, 0.95))
    for engine in (resumed, uninterrupted):
        _packed_loss(engine.module, 5).backward()
        engine.optimizer_step()
    got, want = dict(resumed.named_full_tensors(torch.float32)), dict(uninterrupted.named_full_tensors(None))
    for name in want:
        torch.testing.assert_close(got[name], want[name].float(), atol=0, rtol=0)


def test_resume_evaluates_this_runs_schedule_at_the_restored_step() -> None:
    """A changed total_steps (or warmup) reshapes the schedule from the restored step on."""
    state = _two_steps(_engine(_model(), lr=1e-2, lr_schedule="cosine", total_steps=4))
    resumed = _engine(_model(), lr=2e-2, lr_schedule="cosine", total_steps=12, warmup_steps=4)
    resumed.load_checkpoint_state(state)
    # step 2 of a 4-step warmup: half of this run's lr
    assert resumed.lr() == pytest.approx(1e-2) and resumed.optimizer.param_groups[0]["lr"] == resumed.lr()
    resumed.scheduler_step()
    assert resumed.lr() == pytest.approx(2e-2 * 3 / 4)


def test_settings_and_layout() -> None:
    assert resolve_dtype("auto") == torch.float32  # CPU default
    assert resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8")
    model = _model()
    assert len(decoder_layers(PackedPolicy(model))) == 2
    # Offload flags are accepted on the CPU (nothing to offload to) and checkpointing is switched on.
    engine = _engine(model, param_offload=True, optimizer_offload=True, gradient_checkpointing=True)
    assert model.model.gradient_checkpointing
    engine.train()
    _packed_loss(engine.module).backward()
    assert engine.optimizer_step()[1]
