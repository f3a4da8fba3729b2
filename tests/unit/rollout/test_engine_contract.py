"""The contract every rollout engine meets, parametrised over every engine in the registry.

A new engine joins by its registry entry (``rlkit.rollout.registry.ENGINES``): each test below runs
for every engine over rlkit's loaded model. The engines that load the folder themselves (``vllm``,
``server``) run the same contract in ``tests/integration/rollout_vllm/test_engine_contract_vllm.py``
(their start-up and package need the heavier fixtures there). Models are tiny fp32 folders written in-process (a Qwen2-family model both engines run, and
Qwen3-MoE, Phi-3, Gemma-2, Mistral, which only engines that take any transformers model run).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

from rlkit.models import build_tokenizer, load_causal_lm, load_hf_config
from rlkit.models.tiny_foreign import FOREIGN_ARCHS, tiny_foreign_config, tiny_foreign_model
from rlkit.rollout import EngineGauges, RolloutEngine, SamplingParams
from rlkit.rollout.registry import (
    ENGINES,
    build_engine,
    engine_class,
    loads_checkpoint,
    resolve_engine,
    takes_weights_in_flight,
)
from rlkit.training.heads import PackedPolicy

from .conftest import chisquare_pvalue, hf_tiny
from .test_partial_rollouts import PARAMS as PARTIAL_PARAMS
from .test_partial_rollouts import generate_with_update

VOCAB = 320  # the built-in byte tokenizer's ids fit: stop strings can be decoded
ARCHS = ("qwen2", *FOREIGN_ARCHS)
# fp32 everywhere: the engine (KV cache, one token per step, left padding) and the trainer (one
# packed pass) sum the same products in different orders; relative rounding of ~1e-7 per operation
# through 2 layers and a log-softmax over a few hundred logits stays far below this.
LOGPROB_ATOL = 1e-4


@cache
def _folder(arch: str, root: str, vocab: int = VOCAB) -> Path:
    folder = Path(root) / f"{arch}-{vocab}"
    if arch == "qwen2":
        model = hf_tiny("qwen2", seed=3, vocab=vocab)
    else:
        model = tiny_foreign_model(arch, seed=3, vocab_size=vocab, eos_token_id=None)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("engine-contract"))


def _engine(name: str, arch: str, root: str, vocab: int = VOCAB, **options: Any) -> RolloutEngine:
    folder = _folder(arch, root, vocab)
    return build_engine(name, load_causal_lm(folder), max_num_seqs=8, **options)


@cache
def _hf_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _hf_greedy(folder: Path, prompt: list[int], max_new: int) -> list[int]:
    hf = _hf_model(folder)
    ids = torch.tensor([prompt])
    out = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new,
        min_new_tokens=max_new,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


@cache
def _policy(folder: Path) -> PackedPolicy:
    return PackedPolicy(load_causal_lm(folder))


def _trainer_logprobs(
    folder: Path, prompt: list[int], tokens: list[int], temperature: float, policy: PackedPolicy | None = None
) -> torch.Tensor:
    """The trainer's recomputation: the packed policy forward the actor runs (soft-capping included),
    of ``folder``'s weights or of ``policy``'s."""
    policy = policy or _policy(folder)
    ids = torch.tensor(prompt + tokens)
    gather = torch.arange(len(prompt) - 1, len(ids) - 1)
    with torch.no_grad():
        logprobs, _ = policy(
            ids,
            torch.arange(len(ids)),
            torch.tensor([0, len(ids)], dtype=torch.int32),
            gather,
            torch.tensor(tokens),
            temperature=temperature,
        )
    return logprobs


def _config_json(arch: str) -> dict[str, Any]:
    if arch == "qwen2":
        return {"model_type": "qwen2"}
    return dict(tiny_foreign_config(arch).to_dict())


# the engines built over rlkit's loaded model (vllm and server: the integration sibling)
MODEL_ENGINES = [e for e in ENGINES if not loads_checkpoint(e)]
PROMPTS = [[5, 17, 33, 2, 9], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [7, 3]]
# every (engine, architecture) pair the engine says it runs
ENGINE_ARCH = [
    (e, a)
    for e in MODEL_ENGINES
    for a in ARCHS
    if engine_class(e).unsupported_reason(_config_json(a)) is None
]


@pytest.mark.parametrize(("name", "arch"), ENGINE_ARCH)
def test_greedy_equals_transformers(name: str, arch: str, root: str) -> None:
    engine = _engine(name, arch, root)
    assert isinstance(engine, RolloutEngine)
    outs = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0.0, max_tokens=10))
    for prompt, group in zip(PROMPTS, outs, strict=True):
        expected = _hf_greedy(_folder(arch, root), prompt, 10)
        assert [c.token_ids for c in group] == [expected, expected]
        assert group[0].finish_reason == "length"


@pytest.mark.parametrize(("name", "arch"), ENGINE_ARCH)
def test_logprobs_match_the_trainer_recomputation(name: str, arch: str, root: str) -> None:
    engine = _engine(name, arch, root)
    temperature = 0.8
    outs = engine.generate(PROMPTS, SamplingParams(n=2, temperature=temperature, max_tokens=10, seed=5))
    for prompt, group in zip(PROMPTS, outs, strict=True):
        for c in group:
            assert c.logprobs is not None and c.sampling_logprobs is not None
            recomputed = _trainer_logprobs(_folder(arch, root), prompt, c.token_ids, temperature)
            torch.testing.assert_close(torch.tensor(c.logprobs), recomputed, atol=LOGPROB_ATOL, rtol=0)
            # no truncation, no penalty: the sampling distribution is the policy's
            torch.testing.assert_close(
                torch.tensor(c.sampling_logprobs), recomputed, atol=LOGPROB_ATOL, rtol=0
            )


@pytest.mark.parametrize("name", MODEL_ENGINES)
def test_sampling_frequencies_match_softmax(name: str, root: str) -> None:
    vocab, n, temperature = 12, 2000, 1.5
    engine = _engine(name, "qwen2", root, vocab=vocab, tokenizer=None)
    engine.max_num_seqs = n  # type: ignore[attr-defined]
    prompt = [3, 1, 4, 1, 5]
    outs = engine.generate([prompt], SamplingParams(n=n, temperature=temperature, max_tokens=1, seed=11))
    counts = torch.bincount(torch.tensor([c.token_ids[0] for c in outs[0]]), minlength=vocab).double()
    hf = _hf_model(_folder("qwen2", root, vocab))
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits[0, -1].double()
    assert chisquare_pvalue(counts, torch.softmax(logits / temperature, -1) * n) > 1e-3


@pytest.mark.parametrize("name", MODEL_ENGINES)
def test_n_samples_share_a_prompt_and_seeds_reproduce(name: str, root: str) -> None:
    engine = _engine(name, "qwen2", root)
    params = SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=21)
    first = engine.generate(PROMPTS, params)
    assert [len(group) for group in first] == [4, 4, 4]
    assert all(len({tuple(c.token_ids) for c in group}) > 1 for group in first)
    again = engine.generate(PROMPTS, params)
    alone = engine.generate(PROMPTS[1:2], params)  # a seeded request ignores its batch-mates
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in first]
    assert [c.token_ids for c in alone[0]] == [c.token_ids for c in first[1]]
    stats = getattr(engine, "stats", None)
    if stats is not None:  # the prompt was prefilled once per call, not once per sample
        assert stats.prefill_tokens == 2 * sum(map(len, PROMPTS)) + len(PROMPTS[1])


@pytest.mark.parametrize("name", MODEL_ENGINES)
def test_stop_tokens_and_strings(name: str, root: str) -> None:
    tokenizer = build_tokenizer()
    engine = _engine(name, "qwen2", root, tokenizer=tokenizer)
    free = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    ids = free[0][0].token_ids
    stop_id = ids[3]
    cut = ids.index(stop_id) + 1
    out = engine.generate(
        PROMPTS[:1], SamplingParams(temperature=0.0, max_tokens=16, stop_token_ids=[stop_id])
    )
    assert out[0][0].token_ids == ids[:cut] and out[0][0].finish_reason == "stop"
    printable = [(i, t) for i, g in enumerate(free) for t in g[0].token_ids[1:] if 33 <= t < 127]
    assert printable, "the random model produced no ASCII token to stop on"
    which, token = printable[0]
    stop = chr(token)
    out = engine.generate(
        [PROMPTS[which]], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, stop=[stop])
    )
    ids = free[which][0].token_ids
    cut = next(k for k in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:k]))
    assert out[0][0].token_ids == ids[:cut] and out[0][0].finish_reason == "stop"


@pytest.mark.parametrize("name", MODEL_ENGINES)
def test_weights_pushed_equal_weights_loaded(name: str, root: str) -> None:
    other = load_causal_lm(_folder("qwen2", root), init="random", seed=99)
    pushed = _engine(name, "qwen2", root)
    pushed.update_weights(other.state_dict().items())
    loaded = build_engine(name, other, max_num_seqs=8)
    params = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=3)
    a, b = pushed.generate(PROMPTS, params), loaded.generate(PROMPTS, params)
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    assert [[c.logprobs for c in g] for g in a] == [[c.logprobs for c in g] for g in b]
    with pytest.raises(ValueError, match="no parameter"):
        pushed.update_weights([("not.a.weight", torch.zeros(1))])


@pytest.mark.parametrize("name", [e for e in MODEL_ENGINES if takes_weights_in_flight(e)])
def test_weights_pushed_mid_generation_sample_the_later_tokens(name: str, root: str) -> None:
    """Engines with :class:`~rlkit.rollout.base.InFlightWeights` (partial rollouts): the tokens before
    the push are a run's without it, those after it have the new weights' log-probs."""
    folder = _folder("qwen2", root)
    other = load_causal_lm(folder, init="random", seed=99)
    reference = _engine(name, "qwen2", root).generate(PROMPTS, PARTIAL_PARAMS)
    outs = generate_with_update(_engine(name, "qwen2", root), PROMPTS, list(other.state_dict().items()), 6)
    spanning = 0
    for prompt, group, ref_group in zip(PROMPTS, outs, reference, strict=True):
        for c, ref in zip(group, ref_group, strict=True):
            assert c.weight_versions is not None and c.logprobs is not None
            before = c.weight_versions.count(0)
            spanning += 0 < before < len(c.token_ids)
            assert (
                c.token_ids[:before] == ref.token_ids[:before]
                and c.logprobs[:before] == ref.logprobs[:before]
            )
            new = _trainer_logprobs(
                folder, prompt, c.token_ids, PARTIAL_PARAMS.temperature, PackedPolicy(other)
            )
            torch.testing.assert_close(
                torch.tensor(c.logprobs[before:]), new[before:], atol=LOGPROB_ATOL, rtol=0
            )
    assert spanning > 0


@pytest.mark.parametrize("name", MODEL_ENGINES)
def test_sleep_and_wake_leave_outputs_unchanged(name: str, root: str) -> None:
    engine = _engine(name, "qwen2", root)
    params = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=8)
    before = engine.generate(PROMPTS, params)
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(PROMPTS, params)
    engine.wake()
    after = engine.generate(PROMPTS, params)
    assert [[c.token_ids for c in g] for g in after] == [[c.token_ids for c in g] for g in before]


@pytest.mark.parametrize("name", MODEL_ENGINES)
def test_gauges_follow_the_generation(name: str, root: str) -> None:
    """Read as the engine reports progress (what a scrape on another thread sees): every sample is
    running, waiting or finished; the rate and the cache share are real numbers; idle, all is 0."""
    engine = _engine(name, "qwen2", root)
    engine.max_num_seqs = 4  # type: ignore[attr-defined]  # 6 samples: some must wait at first
    total = 2 * len(PROMPTS)
    seen: list[tuple[int, EngineGauges]] = []
    engine.generate(
        PROMPTS,
        SamplingParams(n=2, temperature=1.0, max_tokens=12, ignore_eos=True, seed=1),
        progress=lambda finished, _tokens: seen.append((finished, engine.gauges())),
    )
    for finished, g in seen:
        assert g.running is not None and g.waiting is not None
        assert g.running + g.waiting + finished == total, (finished, g)
        assert g.tokens_per_s is not None and g.tokens_per_s >= 0
        assert g.kv_cache_used_fraction is None or 0.0 <= g.kv_cache_used_fraction <= 1.0
    assert max(g.running for _, g in seen) >= 2 and max(g.waiting for _, g in seen) >= 1
    assert max(g.tokens_per_s for _, g in seen) > 0
    idle = engine.gauges()
    assert (idle.running, idle.waiting) == (0, 0) and idle.kv_cache_used_fraction in (None, 0.0)
    assert set(idle.as_metrics()) <= {
        "running_seqs",
        "waiting_seqs",
        "kv_cache_used_fraction",
        "tokens_per_s",
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_auto_picks_native_for_its_family_and_hf_otherwise(arch: str, root: str) -> None:
    config = load_hf_config(_folder(arch, root))
    assert resolve_engine("auto", config) == ("native" if arch == "qwen2" else "hf")
    assert resolve_engine("hf", config) == "hf"
    if arch != "qwen2":
        from rlkit.errors import UserError

        with pytest.raises(UserError, match="rollout.engine=native cannot run") as info:
            resolve_engine("native", config)
        assert "hf" in str(info.value.hint)
