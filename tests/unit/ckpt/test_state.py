"""Role state through DCP (exact round trip, shape checks), RNG states as JSON, no unpickling."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rlkit.ckpt.dcp_io import load_full_tensors, read_metadata
from rlkit.ckpt.state import (
    capture_rng,
    load_role_state,
    load_worker_rng,
    restore_rng,
    save_role_state,
    save_worker_rng,
)
from rlkit.errors import UserError
from rlkit.models import CausalLM, DecoderConfig, init_weights, save_hf

from .conftest import make_actor, make_critic, trained_step

pytestmark = pytest.mark.usefixtures("process_group")


def _full(role: object) -> dict[str, torch.Tensor]:
    return dict(role.named_full_tensors(None))  # type: ignore[attr-defined]


def _optim_tensors(role: object) -> dict[str, torch.Tensor]:
    sd = role.engine.optimizer.state_dict()["state"]  # type: ignore[attr-defined]
    out = {}
    for idx, state in sd.items():
        for key, value in state.items():
            t = value.full_tensor() if hasattr(value, "full_tensor") else value
            out[f"{idx}.{key}"] = t
    return out


def test_actor_round_trip_is_exact(actor: object, tmp_path: Path) -> None:
    save_role_state(actor, tmp_path / "actor")
    saved = json.loads((tmp_path / "actor" / "state.json").read_text())
    assert saved["lora"] is None and saved["counters"]["optimizer_steps"] == 1
    assert json.loads((tmp_path / "actor" / "config.json").read_text())["model_type"] == "qwen2"
    assert saved["counters"]["step_count"] == 1

    other = make_actor(seed=7)  # different weights, fresh optimizer
    assert load_role_state(other, tmp_path / "actor") is None
    a, b = _full(actor), _full(other)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = _optim_tensors(actor), _optim_tensors(other)
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)
    ga = actor.engine.optimizer.state_dict()["param_groups"]  # type: ignore[attr-defined]
    gb = other.engine.optimizer.state_dict()["param_groups"]  # type: ignore[attr-defined]
    assert ga == gb and isinstance(gb[0]["betas"], tuple)
    scheduler = actor.engine.scheduler.state_dict()  # type: ignore[attr-defined]
    assert other.engine.scheduler.state_dict() == scheduler  # type: ignore[attr-defined]
    assert other.engine.step_count == 1 and other.engine.optimizer_steps == 1  # type: ignore[attr-defined]

    # the next step after loading equals the next step of the original
    trained_step(actor, seed=3)
    trained_step(other, seed=3)
    a, b = _full(actor), _full(other)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_critic_round_trip(tmp_path: Path) -> None:
    critic = make_critic(seed=0)
    trained_step(critic, seed=1)
    save_role_state(critic, tmp_path / "critic")
    hf = json.loads((tmp_path / "critic" / "config.json").read_text())
    assert hf["architectures"] == ["Qwen2ForTokenClassification"]
    other = make_critic(seed=5)
    assert load_role_state(other, tmp_path / "critic") is None
    a, b = _full(critic), _full(other)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_other_model_shape_is_refused_naming_the_file(actor: object, tmp_path: Path) -> None:
    save_role_state(actor, tmp_path / "actor")
    cfg = DecoderConfig(
        architecture="qwen2", vocab_size=320, hidden_size=64, intermediate_size=128, num_layers=4,
        num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=True, attention_bias=True,
    )  # fmt: skip
    model = CausalLM(cfg)
    init_weights(model, seed=0)
    save_hf(model, tmp_path / "small")
    small = make_actor(model_path=str(tmp_path / "small"))
    before = _full(small)
    problem = load_role_state(small, tmp_path / "actor")
    assert problem is not None and ".metadata" in problem and "shape" in problem
    after = _full(small)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was loaded


def test_missing_role_state_is_a_problem(actor: object, tmp_path: Path) -> None:
    save_role_state(actor, tmp_path / "actor")
    (tmp_path / "actor" / "state.json").unlink()
    problem = load_role_state(make_actor(), tmp_path / "actor")
    assert problem is not None and "state.json" in problem


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_metadata_is_never_unpickled_freely(actor: object, tmp_path: Path) -> None:
    save_role_state(actor, tmp_path / "actor")
    meta = tmp_path / "actor" / "dcp" / ".metadata"
    meta.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(UserError, match=r"\.metadata.*refusing to load"):
        read_metadata(meta.parent)
    problem = load_role_state(make_actor(), tmp_path / "actor")
    assert problem is not None and "refusing to load" in problem
    with pytest.raises(UserError, match="refusing"):
        load_full_tensors(meta.parent, "model.")


def test_full_tensors_without_process_group_match(actor: object, tmp_path: Path) -> None:
    save_role_state(actor, tmp_path / "actor")
    full = load_full_tensors(tmp_path / "actor" / "dcp", "model.")
    expected = _full(actor)
    assert set(expected) <= set(full)
    assert all(torch.equal(full[k], expected[k]) for k in expected)


def test_rng_round_trip_through_json() -> None:
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = json.loads(json.dumps(capture_rng()))  # JSON only, no pickles
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_worker_rng_files_per_rank(tmp_path: Path) -> None:
    torch.manual_seed(11)
    save_worker_rng(tmp_path, 1)
    expected = torch.rand(4)
    torch.manual_seed(12)
    assert load_worker_rng(tmp_path, 1) and torch.equal(torch.rand(4), expected)
    # a rank the checkpoint did not have (resumed on more workers) keeps its own state
    torch.manual_seed(13)
    own = torch.rand(4)
    torch.manual_seed(13)
    assert not load_worker_rng(tmp_path, 2) and torch.equal(torch.rand(4), own)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_rng_round_trip_on_cuda() -> None:
    torch.cuda.manual_seed_all(5)
    state = json.loads(json.dumps(capture_rng()))
    assert state["device"] is not None
    first = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(6)
    restore_rng(state)
    assert torch.equal(torch.rand(4, device="cuda"), first)
