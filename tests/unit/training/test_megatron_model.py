"""Megatron-core's own GPTModel against the converter's layout and against transformers (CPU, gloo, fp32).

Skips without megatron-core. Megatron runs on the CPU here through the test-only shims of
:mod:`megatron_cpu` (its CUDA device and RNG calls redirected; the product never patches it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

pytest.importorskip("megatron.core")

from rlkit.training.megatron_convert import MegatronLayout, hf_to_megatron, megatron_to_hf  # noqa: E402
from rlkit.training.megatron_model import (  # noqa: E402
    MegatronPolicy,
    ParallelSizes,
    build_gpt,
    init_parallel_state,
    load_into,
    megatron_shard,
    transformer_config,
)

from .megatron_cpu import megatron_on_cpu, megatron_version, reset_megatron  # noqa: E402
from .test_megatron_convert import hf_config, hf_state_dict  # noqa: E402


@pytest.fixture(autouse=True)
def megatron_cpu(process_group: None) -> Iterator[None]:
    with megatron_on_cpu():
        init_parallel_state(ParallelSizes())
        yield
    reset_megatron()


def _hf(model_type: str, tied: bool = False) -> dict:
    return {
        **hf_config(model_type, tied),
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 64,
        "norm_topk_prob": True,
    }


def _transformers_model(hf: dict) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**hf)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # larger than HF's 0.02 init, so the logits are not all near zero
        for p in model.parameters():
            p.normal_(0, 0.2 if p.dim() > 1 else 1.0)
    return model


def _megatron(hf: dict, hf_sd: dict[str, torch.Tensor]) -> MegatronPolicy:
    sizes = ParallelSizes()
    gpt = build_gpt(hf, transformer_config(hf, sizes))
    load_into(gpt, megatron_shard(dict(hf_sd), MegatronLayout.from_hf(hf), sizes)[0])
    return MegatronPolicy(gpt.eval())


@pytest.mark.parametrize(
    ("model_type", "tied"), [("llama", False), ("qwen2", True), ("qwen3", False), ("qwen3_moe", True)]
)
def test_converter_layout_is_megatrons(model_type: str, tied: bool) -> None:
    """Every name and shape the converter writes is one Megatron's GPTModel has, and none is missing."""
    hf = _hf(model_type, tied)
    gpt = build_gpt(hf, transformer_config(hf, ParallelSizes()))
    own = {k: tuple(v.shape) for k, v in gpt.state_dict().items() if not k.endswith("_extra_state")}
    converted = {
        k: tuple(v.shape)
        for k, v in hf_to_megatron(hf_state_dict(model_type, tied), MegatronLayout.from_hf(hf)).items()
    }
    assert converted == own


@pytest.mark.parametrize(("model_type", "tied"), [("llama", False), ("qwen2", True), ("qwen3", False)])
def test_logits_match_transformers(model_type: str, tied: bool) -> None:
    hf = _hf(model_type, tied)
    reference = _transformers_model(hf)
    policy = _megatron(hf, reference.state_dict())
    ids = torch.randint(0, hf["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids).logits
        # the two rows packed back to back, each numbered from 0
        hidden = policy.hidden_states(
            ids.flatten(), torch.arange(9).repeat(2), torch.tensor([0, 9, 18], dtype=torch.int32)
        )
        gpt = policy.gpt
        head = gpt.shared_embedding_or_output_weight() if tied else gpt.output_layer.weight
        logits = (hidden @ head.T).view(2, 9, -1)
    scale = expected.abs().max().item()
    assert scale > 1.0
    torch.testing.assert_close(logits, expected, atol=1e-5 * scale, rtol=1e-5)


@pytest.mark.skipif(
    megatron_version() < (0, 19),
    reason="megatron-core < 0.19 without transformer-engine fails in its MoE router",
)
def test_moe_logits_match_transformers() -> None:
    hf = _hf("qwen3_moe")
    reference = _transformers_model(hf)
    policy = _megatron(hf, reference.state_dict())
    ids = torch.randint(0, hf["vocab_size"], (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids).logits[0]
        hidden = policy.hidden_states(ids[0], torch.arange(9), torch.tensor([0, 9], dtype=torch.int32))
        logits = hidden @ policy.gpt.output_layer.weight.T
    torch.testing.assert_close(logits, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-5)


def test_packed_logprobs_and_gradients_match_transformers() -> None:
    """The packed policy forward (rlkit's chunked log-probs) and its weight gradients, mapped back to HF names."""
    hf = _hf("qwen2", tied=True)
    reference = _transformers_model(hf)
    policy = _megatron(hf, reference.state_dict())
    gen = torch.Generator().manual_seed(2)
    lengths = [5, 8]
    ids = [torch.randint(0, hf["vocab_size"], (n,), generator=gen) for n in lengths]
    # Hugging Face: each sequence alone; log-probs of tokens 1.. given the prefix
    expected, loss_ref = [], torch.zeros(())
    for seq in ids:
        logp = reference(seq[None]).logits[0, :-1].float().log_softmax(-1)
        picked = logp.gather(1, seq[1:, None]).squeeze(1)
        expected.append(picked)
        loss_ref = loss_ref + picked.sum()
    loss_ref.backward()
    cu = torch.tensor([0, 5, 13], dtype=torch.int32)
    gather = torch.cat([torch.arange(0, 4), torch.arange(5, 12)])
    labels = torch.cat([ids[0][1:], ids[1][1:]])
    logp_N, entropy_N = policy(
        torch.cat(ids),
        torch.cat([torch.arange(n) for n in lengths]),
        cu,
        gather,
        labels,
        with_entropy=True,
        chunk_tokens=3,
    )
    torch.testing.assert_close(logp_N, torch.cat(expected), atol=1e-5, rtol=1e-5)
    assert entropy_N is not None and (entropy_N > 0).all()
    logp_N.sum().backward()
    layout = MegatronLayout.from_hf(hf)
    grads = megatron_to_hf({n: p.grad for n, p in policy.gpt.named_parameters()}, layout)
    for name, param in reference.named_parameters():
        if name == "lm_head.weight":
            continue  # tied: the embedding's gradient holds both
        torch.testing.assert_close(grads[name], param.grad, atol=1e-4, rtol=1e-4, msg=name)
