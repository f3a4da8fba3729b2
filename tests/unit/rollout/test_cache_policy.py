"""``rollout.free_cache``: when a colocated engine frees its memory for the actor's update."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit.rollout import NativeEngine, SamplingParams
from rlkit.rollout.cache_policy import HEADROOM_BYTES, CacheKeeper, fits

from .conftest import random_prompts, tiny_native

GIB = 1 << 30


def test_fits_is_the_growth_with_its_margins() -> None:
    need = math.ceil(4 * GIB * 1.15) + HEADROOM_BYTES
    assert fits(4 * GIB, need)
    assert not fits(4 * GIB, need - 2)
    assert not fits(0, HEADROOM_BYTES - 1)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, always or never"):
        CacheKeeper("sometimes", on_accelerator=False)


@pytest.mark.parametrize(("mode", "frees"), [("always", True), ("auto", True), ("never", False)])
def test_cpu_modes(mode: str, frees: bool) -> None:
    """On the CPU ``auto`` frees like ``always``; ``never`` keeps the cache across the update."""
    engine = NativeEngine(tiny_native(seed=1), max_num_seqs=4)
    engine.generate(random_prompts(2, seed=2), SamplingParams(temperature=0.0, max_tokens=4))
    keeper = CacheKeeper(mode, on_accelerator=False)
    for _ in range(2):
        keeper.before_update(engine)
        assert (engine.num_slots == 0) is frees
        keeper.after_update()
        engine.wake()
        assert engine.num_slots == 4


def test_kept_cache_takes_pushed_weights() -> None:
    """An engine kept awake through the update generates with the weights pushed after it."""
    prompts, params = random_prompts(3, seed=3), SamplingParams(temperature=0.0, max_tokens=8)
    engine = NativeEngine(tiny_native(seed=4), max_num_seqs=4)
    engine.generate(prompts, params)
    keeper = CacheKeeper("never", on_accelerator=False)
    keeper.before_update(engine)
    new = tiny_native(seed=5)
    keeper.after_update()
    engine.update_weights(new.state_dict().items())
    got = [[c.token_ids for c in g] for g in engine.generate(prompts, params)]
    want = [[c.token_ids for c in g] for g in NativeEngine(new, max_num_seqs=4).generate(prompts, params)]
    assert got == want


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_keeps_graphs_when_the_update_fits_and_frees_when_it_does_not() -> None:
    """Measured on the device: a small update keeps the engine (and its graphs) awake; an update that
    takes most of the free memory makes the next update free it again."""
    engine = NativeEngine(tiny_native(seed=6).to("cuda", torch.bfloat16), max_num_seqs=8)
    prompts, params = random_prompts(4, seed=7), SamplingParams(temperature=0.0, max_tokens=8)
    before = engine.generate(prompts, params)
    graphs = engine._graphs  # noqa: SLF001
    keeper = CacheKeeper("auto", on_accelerator=True)

    def update(nbytes: int) -> None:
        keeper.before_update(engine)
        scratch = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        del scratch
        keeper.after_update()
        engine.wake()

    update(64 << 20)
    assert engine.num_slots == 0 or keeper.keep  # the first update ran with the engine asleep
    assert keeper.keep and keeper.updates_measured == 1
    graphs = engine._graphs  # noqa: SLF001 (re-captured once, after the measured update)
    update(64 << 20)
    assert engine._graphs is graphs, "kept awake: no re-capture"  # noqa: SLF001
    assert [[c.token_ids for c in g] for g in engine.generate(prompts, params)] == [
        [c.token_ids for c in g] for g in before
    ]
    free, _ = torch.cuda.mem_get_info()
    update(int(free * 0.9))
    assert not keeper.keep
    update(64 << 20)  # freed for this one, measured again: fits
    assert keeper.keep
