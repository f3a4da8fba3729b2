"""Weights pushed in the middle of a generation (partial rollouts) on the native and hf engines.

A pusher thread hands new weights over while ``generate`` runs (the progress callback starts it
after a few tokens and waits until the weights are posted, so the update lands at a known step).
Tokens sampled before the update are kept exactly (the same as a run that never updated); every
token's log-prob equals a full recomputation under the weights its version names, the later ones
under the new weights, which also shows that the in-flight KV cache was recomputed (keys and
values of the old weights would give other log-probs).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from rlkit.rollout import Completion, HFEngine, InFlightWeights, NativeEngine, SamplingParams

from .conftest import hf_tiny, native_copy, random_prompts

TEMPERATURE = 0.8
PARAMS = SamplingParams(n=2, temperature=TEMPERATURE, max_tokens=12, seed=3)
# fp32 logits of a 2-layer model: rounding is ~1e-6; the margin covers other summation orders
# (thread counts, prefill vs decode kernels). Two random models differ by far more (checked).
ATOL = 1e-4


def _models(kind: str) -> tuple[Callable[[], Any], Any, Any]:
    """(a fresh engine over the old weights, the old model, the new model) of one engine kind."""
    old_hf, new_hf = hf_tiny("qwen2", seed=9), hf_tiny("qwen2", seed=10)
    if kind == "native":
        old, new = native_copy(old_hf), native_copy(new_hf)
        return (lambda: NativeEngine(copy.deepcopy(old), max_num_seqs=4)), old, new
    return (lambda: HFEngine(copy.deepcopy(old_hf), max_num_seqs=4)), old_hf, new_hf


def _logprobs(model: Any, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """log_softmax(logits / T) of ``model`` at ``tokens`` after ``prompt`` (one full forward)."""
    with torch.no_grad():
        out = model(torch.tensor([prompt + tokens]))
    logits = (out if isinstance(out, torch.Tensor) else out.logits)[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.float() / TEMPERATURE, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0]


def generate_with_update(
    engine: Any, prompts: list[list[int]], weights: list[tuple[str, torch.Tensor]], after_tokens: int
) -> list[list[Completion]]:
    """``engine.generate`` with ``weights`` pushed from another thread once ``after_tokens`` were generated."""
    pusher: threading.Thread | None = None

    def progress(done: int, tokens: int) -> None:
        nonlocal pusher
        if pusher is None and tokens >= after_tokens:
            pusher = threading.Thread(target=engine.update_weights_in_flight, args=(weights,))
            pusher.start()
            deadline = time.monotonic() + 30
            while not engine._mailbox.has_mail:  # posted: it loads at the next step boundary
                assert time.monotonic() < deadline, "the pusher never posted its weights"
                time.sleep(0.001)

    out = engine.generate(prompts, PARAMS, progress=progress)
    assert pusher is not None
    pusher.join(timeout=30)
    assert not pusher.is_alive()
    return out


@pytest.mark.parametrize("kind", ["native", "hf"])
def test_an_update_mid_generation_keeps_earlier_tokens_and_samples_later_ones_from_the_new_weights(
    kind: str,
) -> None:
    build, old, new = _models(kind)
    prompts = random_prompts(3, seed=11)
    reference = build().generate(prompts, PARAMS)  # the old weights throughout
    engine = build()
    assert isinstance(engine, InFlightWeights)
    outs = generate_with_update(engine, prompts, list(new.state_dict().items()), after_tokens=8)
    assert engine.weight_version == 1
    spanning = 0
    for prompt, group, ref_group in zip(prompts, outs, reference, strict=True):
        for c, ref in zip(group, ref_group, strict=True):
            versions = c.weight_versions
            assert versions is not None and len(versions) == len(c.token_ids)
            assert versions == sorted(versions) and set(versions) <= {0, 1}
            before = versions.count(0)
            spanning += 0 < before < len(versions)
            # the tokens of the old weights are the ones a run without the update sampled, exactly
            assert c.token_ids[:before] == ref.token_ids[:before]
            assert c.logprobs is not None and ref.logprobs is not None
            assert c.logprobs[:before] == ref.logprobs[:before]
            got = torch.tensor(c.logprobs)
            under_old, under_new = _logprobs(old, prompt, c.token_ids), _logprobs(new, prompt, c.token_ids)
            torch.testing.assert_close(got[:before], under_old[:before], atol=ATOL, rtol=0)
            torch.testing.assert_close(got[before:], under_new[before:], atol=ATOL, rtol=0)
            if before < len(versions):
                assert (got[before:] - under_old[before:]).abs().max() > 100 * ATOL
    assert spanning > 0, "no sequence was in flight when the weights arrived"


@pytest.mark.parametrize("kind", ["native", "hf"])
def test_an_update_between_generations_is_an_ordinary_update(kind: str) -> None:
    build, _, new = _models(kind)
    prompts = random_prompts(2, seed=12)
    engine = build()
    engine.update_weights_in_flight(new.state_dict().items())
    assert engine.weight_version == 1
    outs = engine.generate(prompts, PARAMS)
    expected = build()
    expected.update_weights(new.state_dict().items())
    assert [[c.token_ids for c in g] for g in outs] == [
        [c.token_ids for c in g] for g in expected.generate(prompts, PARAMS)
    ]
    assert all(c.weight_versions == [1] * len(c.token_ids) for g in outs for c in g)


def test_a_bad_push_mid_generation_fails_the_push_and_the_generation() -> None:
    build, _, _ = _models("native")
    engine = build()
    errors: list[BaseException] = []

    def push() -> None:
        try:
            engine.update_weights_in_flight([("model.nope.weight", torch.zeros(1))])
        except ValueError as exc:
            errors.append(exc)

    pusher = threading.Thread(target=push)

    def progress(done: int, tokens: int) -> None:
        if not pusher.is_alive() and not errors and tokens >= 4:
            pusher.start()
            while not engine._mailbox.has_mail:
                time.sleep(0.001)

    with pytest.raises(ValueError, match="no parameter"):
        engine.generate(random_prompts(2, seed=13), PARAMS, progress=progress)
    pusher.join(timeout=30)
    assert len(errors) == 1 and "no parameter" in str(errors[0])
