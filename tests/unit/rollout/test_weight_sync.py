"""Weight version and checksums after every push, for every engine (rlkit.rollout.weight_sync).

The check the trainer's rollout worker runs after each push (:func:`check_push`,
:func:`push_checked`) on real native and hf engines: a push that lands passes; a push that silently
does nothing (an engine whose push drops the tensors, as a broken vLLM extension would), a tensor
that changed on the way, a push that leaves a parameter out and a version that does not advance
are one :class:`WeightSyncError` naming the step (and the tensor). The vLLM side of the receipt
runs in tests/integration/rollout_vllm.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import torch

from rlkit.rollout.hf import HFEngine
from rlkit.rollout.native import NativeEngine
from rlkit.rollout.weight_sync import (
    ChecksumTap,
    Receipt,
    WeightSyncError,
    WordSumAccumulator,
    check_checksums,
    check_push,
    checksum_names,
    push_checked,
    tensor_checksums,
    word_sum,
)

from .conftest import hf_tiny, native_copy

NAMES = [
    "model.embed_tokens.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.qkv_proj.weight",
    "model.layers.1.input_layernorm.weight",
    "model.layers.1.post_attention_layernorm.weight",
    "model.layers.10.post_attention_layernorm.weight",
    "model.norm.weight",
]


def test_checksum_names_pick_embeddings_and_the_last_layers_norms() -> None:
    assert checksum_names(NAMES) == [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "model.layers.10.post_attention_layernorm.weight",
    ]
    assert "lm_head.weight" in checksum_names([*NAMES, "lm_head.weight"])
    projections = ["model.layers.1.mlp.down_proj.weight", "model.layers.10.self_attn.o_proj.weight"]
    # linear: the last layer's projections too (all a LoRA run changes)
    assert checksum_names([*NAMES, *projections], linear=True)[-1:] == projections[-1:]
    assert not set(projections) & set(checksum_names([*NAMES, *projections]))


def test_checksums_match_themselves_and_catch_a_stale_tensor() -> None:
    gen = torch.Generator().manual_seed(0)
    new = [(n, torch.randn(64, 8, generator=gen)) for n in NAMES]
    names = checksum_names(NAMES)
    expected = tensor_checksums(new, names)
    assert expected.keys() == set(names)
    # the same values in another storage, and as a non-contiguous view: exactly the same sums
    check_checksums(expected, tensor_checksums([(n, t.clone()) for n, t in new], names), 3)
    check_checksums(expected, tensor_checksums([(n, t.t().contiguous().t()) for n, t in new], names), 3)
    stale = dict(new)
    stale["model.norm.weight"] = stale["model.norm.weight"] + 1e-3
    with pytest.raises(WeightSyncError, match="v3: .*model.norm.weight.*did not take the new weights"):
        check_checksums(expected, tensor_checksums(stale.items(), names), 3)
    with pytest.raises(WeightSyncError, match="checksum None"):
        check_checksums(expected, {}, 3)


def test_a_weight_sync_error_reaches_the_user_as_one_line() -> None:
    """What the controller reports for a worker's WeightSyncError (rlkit.controller.causes.describe)."""
    from rlkit.controller.causes import describe

    with pytest.raises(WeightSyncError) as info:
        check_checksums({"model.norm.weight": 1}, {"model.norm.weight": 2}, 3)
    try:
        raise RuntimeError("actor call failed") from info.value
    except RuntimeError as wrapped:
        line = describe(wrapped)
    assert "\n" not in line and line.startswith("WeightSyncError: weight push v3")
    assert line.endswith("the engine did not take the new weights")


def _new_weights(engine: Any, seed: int) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of the engine's model, perturbed (what a trainer step would push)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (name, t + 0.01 * torch.randn(t.shape, generator=gen))
        for name, t in engine.model.state_dict().items()
    ]


class _DroppingEngine(NativeEngine):
    """A native engine whose push reports success and copies nothing (a broken extension's behaviour)."""

    def update_weights(self, named_tensors: Any) -> None:
        self.ledger.pushed(tensor_checksums(named_tensors, self._checked), Receipt({}))


@pytest.mark.parametrize("kind", ["native", "hf"])
def test_every_engine_reports_version_and_checksum_of_a_push(kind: str) -> None:
    hf = hf_tiny("qwen2", seed=3)
    engine = NativeEngine(native_copy(hf)) if kind == "native" else HFEngine(hf)
    assert engine.weight_version == 0
    new = _new_weights(engine, seed=1)
    tap = ChecksumTap(new)
    engine.update_weights(tap)
    report = check_push(1, engine, 0, tap.checksums())
    assert engine.push_receipt().sums == tap.checksums() and len(tap.checksums()) == len(new)
    assert report["version"] == engine.weight_version == 1
    want = tensor_checksums(new, checksum_names((name for name, _ in new), linear=True))
    assert report["checksum"].keys() == want.keys() and "model.norm.weight" in want
    assert any(name.endswith("o_proj.weight") for name in want)
    engine.verify_weights()
    assert report["checksum"] == want


def test_a_push_that_silently_does_nothing_stops_the_run() -> None:
    engine = _DroppingEngine(native_copy(hf_tiny("qwen2", seed=3)))
    tap = ChecksumTap(_new_weights(engine, seed=2))
    engine.update_weights(tap)
    with pytest.raises(WeightSyncError, match=r"after step 7 \(engine v1\): .*did not take in model.embed"):
        check_push(7, engine, 0, tap.checksums())
    with pytest.raises(WeightSyncError, match="did not take the new weights"):
        engine.verify_weights()


def test_a_version_that_does_not_advance_or_no_common_checksum_stops_the_run() -> None:
    engine = NativeEngine(native_copy(hf_tiny("qwen2", seed=3)))
    tap = ChecksumTap(_new_weights(engine, seed=2))
    engine.update_weights(tap)
    with pytest.raises(WeightSyncError, match="after step 4: .*weight version stayed at v1"):
        check_push(4, engine, 1, tap.checksums())
    with pytest.raises(WeightSyncError, match=r"after step 4 \(engine v1\): .*reads back none of the pushed"):
        unread = {n: v for n, v in tap.checksums().items() if n not in engine.weights_checksum()}
        check_push(4, engine, 0, unread)


def test_the_tap_passes_every_tensor_through_and_sums_every_one() -> None:
    pairs = [(name, torch.full((2, 2), float(i))) for i, name in enumerate(NAMES)]
    tap = ChecksumTap(pairs)
    assert [name for name, _ in tap] == NAMES
    assert tap.checksums() == {name: int(word_sum(t)) for name, t in pairs}


def test_word_sums_are_exact_whatever_the_layout_order_or_threads() -> None:
    """An integer sum: equal bit for bit for the same values (no tolerance), different for others."""
    gen = torch.Generator().manual_seed(5)
    t = torch.randn(96, 40, generator=gen)
    view = t.t()  # not contiguous: summed as a contiguous copy of the same values
    assert int(word_sum(view)) == int(word_sum(view.contiguous()))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = int(word_sum(t))
    finally:
        torch.set_num_threads(threads)
    assert one_thread == int(word_sum(t.clone()))
    nudged = t.clone()
    nudged[7, 3] = torch.nextafter(nudged[7, 3], torch.tensor(10.0))  # one ulp of one value
    assert int(word_sum(nudged)) != int(word_sum(t))
    assert int(word_sum(-t)) != int(word_sum(t))
    # bf16 with an odd element count, a slice at an odd offset, a bool, an empty tensor
    odd = torch.randn(7, generator=gen).to(torch.bfloat16)
    assert int(word_sum(odd)) == int(odd.view(torch.int16).sum())
    row = torch.arange(9, dtype=torch.float32)[1:4]
    assert int(word_sum(row)) == int(row.clone().view(torch.int32).sum())
    assert int(word_sum(torch.tensor([True, False, True]))) == 2
    assert int(word_sum(torch.empty(0))) == 0


def test_the_accumulator_fetches_every_sum_at_the_end() -> None:
    sums = WordSumAccumulator()
    tensors = {f"t{i}": torch.full((3, 4), float(i)) for i in range(5)}
    for name, tensor in tensors.items():
        sums.add(name, tensor)
    assert sums.result() == {name: int(word_sum(t)) for name, t in tensors.items()}


def test_a_tensor_that_changed_on_the_way_is_named_with_the_step() -> None:
    """The engine took in another value of one projection (what the read-back cannot see on vLLM)."""
    engine = NativeEngine(native_copy(hf_tiny("qwen2", seed=3)))
    new = _new_weights(engine, seed=2)
    tap = ChecksumTap(new)
    list(tap)
    name = "model.layers.0.mlp.up_proj.weight"
    changed = [(n, t + 1e-3 if n == name else t) for n, t in new]
    engine.update_weights(changed)
    with pytest.raises(WeightSyncError, match=rf"after step 3 \(engine v1\): .*took in {name} with checksum"):
        check_push(3, engine, 0, tap.checksums())


@pytest.mark.parametrize("kind", ["native", "hf"])
def test_a_push_that_leaves_a_parameter_out_stops_with_the_step(kind: str) -> None:
    hf = hf_tiny("qwen2", seed=3)
    engine = NativeEngine(native_copy(hf)) if kind == "native" else HFEngine(hf)
    new = [(n, t) for n, t in _new_weights(engine, seed=2) if "layers.1.self_attn.o_proj" not in n]
    with pytest.raises(WeightSyncError) as info:
        push_checked(5, engine, new)
    line = str(info.value)
    assert line.startswith("weight push after step 5 (engine v1): no pushed tensor covered")
    assert "model.layers.1.self_attn.o_proj.weight" in line and "\n" not in line
    # the next full push lands
    report = push_checked(6, engine, _new_weights(engine, seed=4))
    assert report["version"] == 2


def test_push_checked_takes_the_senders_sums_and_the_error_survives_ray() -> None:
    """Split placement: the sums come from the actor's process; a WeightSyncError pickles (Ray)."""
    engine = NativeEngine(native_copy(hf_tiny("qwen2", seed=3)))
    new = _new_weights(engine, seed=2)
    tap = ChecksumTap(new)
    list(tap)
    assert push_checked(2, engine, iter(new), sent=tap.checksums())["version"] == 1
    stale = {**tap.checksums(), "model.norm.weight": 0}
    with pytest.raises(WeightSyncError, match=r"after step 2 \(engine v2\): .*model.norm.weight") as info:
        push_checked(2, engine, iter(new), sent=stale)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.problem == info.value.problem


def test_two_names_of_one_tied_storage_are_read_back_after_the_push() -> None:
    """A push of both names of a tied weight with different values: the engine keeps the later one,
    and the receipt shows it under the first name (read back at the end, not after its own copy)."""
    engine = NativeEngine(native_copy(hf_tiny("qwen2", seed=3, tie=True)))
    state = engine.model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    pairs = [(n, t + (0.02 if n == "lm_head.weight" else 0.01)) for n, t in state.items()]
    with pytest.raises(WeightSyncError, match=r"step 1 .*model.embed_tokens.weight has checksum"):
        push_checked(1, engine, pairs)
    kept = int(word_sum(dict(pairs)["lm_head.weight"]))
    assert engine.push_receipt().sums["model.embed_tokens.weight"] == kept
    assert push_checked(2, engine, [(n, t + 0.01) for n, t in engine.model.named_parameters()])
