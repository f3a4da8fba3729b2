"""Checks of ``rlkit.rollout.sampling_kernel`` (the fused sampler), run under Triton's CPU interpreter.

``test_sampling_kernel.py`` runs this module in a subprocess with ``TRITON_INTERPRET=1`` (see
``_interpreter.py``); the GPU tests call the same checks with ``device="cuda"``. Each check raises on
a mismatch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from ._interpreter import run_checks
from .conftest import chisquare_pvalue


def _sample(logits: torch.Tensor, temperature: torch.Tensor, keys: torch.Tensor, counters: torch.Tensor):
    from rlkit.rollout.sampling_kernel import fused_sample

    dev = logits.device
    return fused_sample(logits, temperature.to(dev), keys.to(dev), counters.to(dev))


def check_greedy_and_logprobs(dtype: torch.dtype, device: str = "cpu", vocab: int = 3001) -> None:
    """Greedy rows take the argmax; every log-prob is log_softmax(logits / T) at the token.

    3001 columns span two loop steps of the kernel and end mid-block, so its masking is exercised.
    """
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, vocab, generator=g) * 3).to(device, dtype)
    temperature = torch.tensor([1.0, 0.0, 0.7, 1.3, -1.0, 2.0])
    keys = torch.arange(6) * 7919 + 5
    tokens, logprobs, sampling = _sample(logits, temperature, keys, torch.arange(6) + 100)
    ref_logits = logits.float().cpu()
    greedy = temperature <= 0
    assert torch.equal(tokens.cpu()[greedy], ref_logits.argmax(-1)[greedy]), "greedy rows: not the argmax"
    scale = torch.where(greedy, 1.0, temperature)[:, None]
    ref = torch.log_softmax(ref_logits / scale, -1).gather(1, tokens.cpu()[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs.cpu(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sampling.cpu(), torch.where(greedy, 0.0, ref), atol=1e-5, rtol=1e-5)


def check_frequencies(device: str = "cpu", rows: int = 300, temperature: float = 1.0) -> None:
    """Tokens drawn with distinct counters follow softmax(logits / T) (chi-square p > 0.001)."""
    logits_row = torch.tensor([0.0, 1.0, -1.0, 2.0])
    logits = logits_row.repeat(rows, 1).to(device)
    tokens, _, _ = _sample(
        logits, torch.full((rows,), temperature), torch.full((rows,), 12345), torch.arange(rows)
    )
    counts = torch.bincount(tokens.cpu(), minlength=4)
    expected = torch.softmax(logits_row.double() / temperature, -1) * rows
    p_value = chisquare_pvalue(counts, expected)
    assert p_value > 1e-3, f"chi-square p = {p_value:.2g}: counts {counts.tolist()} vs {expected.tolist()}"


def check_frequencies_across_splits(device: str = "cpu", rows: int = 300, vocab: int = 17_000) -> None:
    """Hot tokens in every split of a row (17,000 columns: splits of 8,192, 8,192 and 616, the
    first and last columns among them) are drawn in proportion to softmax (chi-square p > 0.001),
    and no cold token is drawn: the draw finds the split, then the column inside it."""
    logits_row = torch.full((vocab,), -40.0)
    hot = torch.tensor([0, 900, 8191, 8192, 12_000, 16_383, 16_384, 16_700, vocab - 1])
    logits_row[hot] = torch.linspace(-1.0, 1.5, len(hot))
    tokens, logprobs, _ = _sample(
        logits_row.to(device).repeat(rows, 1), torch.ones(rows), torch.full((rows,), 5), torch.arange(rows)
    )
    assert bool(torch.isin(tokens.cpu(), hot).all()), "a cold token was drawn"
    probs = torch.softmax(logits_row.double(), -1)
    counts = torch.bincount(tokens.cpu(), minlength=vocab)[hot]
    p_value = chisquare_pvalue(counts, probs[hot] * rows)
    assert p_value > 1e-3, f"chi-square p = {p_value:.2g}: counts {counts.tolist()}"
    ref = torch.log(probs.float())[tokens.cpu()]
    torch.testing.assert_close(logprobs.cpu(), ref, atol=1e-5, rtol=1e-5)


def check_draw_is_keyed_by_key_and_counter(device: str = "cpu") -> None:
    """A row's token depends on (key, counter) and its logits only, not on its batch or row index."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 50, generator=g).to(device)
    keys = torch.arange(8) * 31 + 1
    counters = torch.arange(8) * 3
    ones = torch.ones(8)
    tokens, _, _ = _sample(logits, ones, keys, counters)
    order = torch.tensor([5, 2, 7, 0, 3, 1, 6, 4])
    shuffled, _, _ = _sample(logits[order.to(device)], ones, keys[order], counters[order])
    assert torch.equal(shuffled.cpu(), tokens.cpu()[order]), "the token depends on the row's place"
    alone, _, _ = _sample(logits[3:4], ones[:1], keys[3:4], counters[3:4])
    assert int(alone) == int(tokens[3]), "the token depends on the other rows"
    # The same row at 40 counters (positions) draws different tokens: the counter reaches the draw.
    same = logits[:1].repeat(40, 1)
    drawn, _, _ = _sample(same, torch.ones(40), torch.full((40,), 7), torch.arange(40))
    assert len(set(drawn.tolist())) > 5, f"40 counters drew only {sorted(set(drawn.tolist()))}"
    again, _, _ = _sample(same, torch.ones(40), torch.full((40,), 7), torch.arange(40))
    assert torch.equal(again, drawn), "the same (key, counter) drew different tokens"


def check_engine_sampling_uses_the_kernel() -> None:
    """The engine samples through the kernel (no truncation) and its log-probs match a recomputation."""
    from rlkit.rollout import NativeEngine, SamplingParams, sampling_kernel

    from .conftest import hf_tiny, native_copy, random_prompts

    calls = []
    original = sampling_kernel.fused_sample

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    sampling_kernel.fused_sample = counting
    try:
        model = native_copy(hf_tiny("qwen2", seed=41))
        prompts = random_prompts(3, seed=42)
        params = SamplingParams(n=2, temperature=0.8, max_tokens=5, seed=3)
        outs = NativeEngine(model, max_num_seqs=8).generate(prompts, params)
        again = NativeEngine(model, max_num_seqs=3).generate(prompts, params)
    finally:
        sampling_kernel.fused_sample = original
    assert calls, "the engine did not call the fused sampler"
    for group, other in zip(outs, again, strict=True):
        for completion, repeat in zip(group, other, strict=True):
            assert completion.token_ids == repeat.token_ids, "seeded samples changed with the batching"
    for prompt, group in zip(prompts, outs, strict=True):
        for completion in group:
            ids = torch.tensor([prompt + completion.token_ids])
            with torch.no_grad():
                logits = model(ids)[0, len(prompt) - 1 : -1].float() / 0.8
            ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(completion.token_ids)[:, None])
            torch.testing.assert_close(torch.tensor(completion.logprobs), ref.squeeze(1), atol=1e-4, rtol=0)


CHECKS: dict[str, Callable[[], None]] = {
    "greedy_and_logprobs_fp32": lambda: check_greedy_and_logprobs(torch.float32),
    "greedy_and_logprobs_bf16": lambda: check_greedy_and_logprobs(torch.bfloat16),
    "frequencies": check_frequencies,
    "frequencies_hot": lambda: check_frequencies(temperature=1.7),
    "frequencies_across_splits": check_frequencies_across_splits,
    "draw_is_keyed_by_key_and_counter": check_draw_is_keyed_by_key_and_counter,
    "engine_sampling_uses_the_kernel": check_engine_sampling_uses_the_kernel,
}


if __name__ == "__main__":
    sys.exit(run_checks(CHECKS, sys.argv[1:]))
