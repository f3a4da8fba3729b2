"""The HF <-> Megatron converter: exact round trips, fused layouts, and TP / PP / EP shards (no Megatron needed).

The layouts asserted here are Megatron-core's (``linear_qkv`` per GQA group, ``linear_fc1`` gate
over up, gate and up split separately per TP rank); ``test_megatron_model.py`` checks them
against Megatron itself where megatron-core is installed.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from rlkit.training.megatron_convert import (
    MegatronLayout,
    gather_ep,
    gather_pp,
    gather_tp,
    hf_to_megatron,
    iter_hf_tensors,
    megatron_to_hf,
    parallel_shape_problem,
    shard_ep,
    shard_pp,
    shard_tp,
    stage_layers,
)

HIDDEN, HEADS, KV, HEAD_DIM, FFN, VOCAB, LAYERS, EXPERTS, MOE_FFN = 16, 4, 2, 4, 24, 32, 4, 4, 8


def hf_config(model_type: str = "qwen2", tied: bool = False) -> dict:
    cfg = {
        "model_type": model_type,
        "num_hidden_layers": LAYERS,
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "head_dim": HEAD_DIM,
        "intermediate_size": FFN,
        "vocab_size": VOCAB,
        "tie_word_embeddings": tied,
    }
    if model_type == "qwen3_moe":
        cfg.update(num_experts=EXPERTS, moe_intermediate_size=MOE_FFN, num_experts_per_tok=2)
    return cfg


def hf_state_dict(model_type: str = "qwen2", tied: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under every name a Hugging Face checkpoint of ``model_type`` has."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    sd = {"model.embed_tokens.weight": rand(VOCAB, HIDDEN), "model.norm.weight": rand(HIDDEN)}
    if not tied:
        sd["lm_head.weight"] = rand(VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = rand(HIDDEN)
        sd[p + "post_attention_layernorm.weight"] = rand(HIDDEN)
        sd[p + "self_attn.q_proj.weight"] = rand(HEADS * HEAD_DIM, HIDDEN)
        sd[p + "self_attn.k_proj.weight"] = rand(KV * HEAD_DIM, HIDDEN)
        sd[p + "self_attn.v_proj.weight"] = rand(KV * HEAD_DIM, HIDDEN)
        sd[p + "self_attn.o_proj.weight"] = rand(HIDDEN, HEADS * HEAD_DIM)
        if model_type == "qwen2":
            for proj, rows in (("q", HEADS), ("k", KV), ("v", KV)):
                sd[p + f"self_attn.{proj}_proj.bias"] = rand(rows * HEAD_DIM)
        if model_type in ("qwen3", "qwen3_moe"):
            sd[p + "self_attn.q_norm.weight"] = rand(HEAD_DIM)
            sd[p + "self_attn.k_norm.weight"] = rand(HEAD_DIM)
        if model_type == "qwen3_moe":
            sd[p + "mlp.gate.weight"] = rand(EXPERTS, HIDDEN)
            for j in range(EXPERTS):
                sd[p + f"mlp.experts.{j}.gate_proj.weight"] = rand(MOE_FFN, HIDDEN)
                sd[p + f"mlp.experts.{j}.up_proj.weight"] = rand(MOE_FFN, HIDDEN)
                sd[p + f"mlp.experts.{j}.down_proj.weight"] = rand(HIDDEN, MOE_FFN)
        else:
            sd[p + "mlp.gate_proj.weight"] = rand(FFN, HIDDEN)
            sd[p + "mlp.up_proj.weight"] = rand(FFN, HIDDEN)
            sd[p + "mlp.down_proj.weight"] = rand(HIDDEN, FFN)
    return sd


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


FAMILIES = [("llama", False), ("qwen2", False), ("qwen2", True), ("qwen3", True), ("qwen3_moe", False)]


@pytest.mark.parametrize(("model_type", "tied"), FAMILIES)
def test_round_trip_is_exact(model_type: str, tied: bool) -> None:
    hf = hf_state_dict(model_type, tied)
    layout = MegatronLayout.from_hf(hf_config(model_type, tied))
    mg = hf_to_megatron(hf, layout)
    assert ("output_layer.weight" in mg) is not tied
    assert_same(megatron_to_hf(mg, layout), hf)
    assert_same(dict(iter_hf_tensors(iter(mg.items()), layout)), hf)


def test_qkv_is_fused_per_gqa_group() -> None:
    hf = hf_state_dict("qwen2")
    layout = MegatronLayout.from_hf(hf_config("qwen2"))
    qkv = hf_to_megatron(hf, layout)["decoder.layers.0.self_attention.linear_qkv.weight"]
    q, k, v = (hf[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv")
    per = HEADS // KV
    rows = (per + 2) * HEAD_DIM
    for g in range(KV):
        group = qkv[g * rows : (g + 1) * rows]
        assert torch.equal(group[: per * HEAD_DIM], q[g * per * HEAD_DIM : (g + 1) * per * HEAD_DIM])
        assert torch.equal(group[per * HEAD_DIM : (per + 1) * HEAD_DIM], k[g * HEAD_DIM : (g + 1) * HEAD_DIM])
        assert torch.equal(group[(per + 1) * HEAD_DIM :], v[g * HEAD_DIM : (g + 1) * HEAD_DIM])
    bias = hf_to_megatron(hf, layout)["decoder.layers.0.self_attention.linear_qkv.bias"]
    assert bias.shape == ((HEADS + 2 * KV) * HEAD_DIM,)


@pytest.mark.parametrize(("model_type", "tp"), [("qwen2", 2), ("qwen3", 2), ("qwen3_moe", 2), ("llama", 1)])
def test_tensor_parallel_shards_and_gather(model_type: str, tp: int) -> None:
    layout = MegatronLayout.from_hf(hf_config(model_type))
    mg = hf_to_megatron(hf_state_dict(model_type), layout)
    shards = [shard_tp(mg, tp, r) for r in range(tp)]
    assert_same(gather_tp(shards), mg)
    qkv = "decoder.layers.1.self_attention.linear_qkv.weight"
    assert shards[0][qkv].shape[0] == (HEADS + 2 * KV) * HEAD_DIM // tp
    # each rank's qkv rows are its own GQA groups: they split back into its q, k and v heads
    hf_rank = megatron_to_hf({qkv: shards[-1][qkv]}, layout)
    k_full = hf_state_dict(model_type)["model.layers.1.self_attn.k_proj.weight"]
    assert torch.equal(hf_rank["model.layers.1.self_attn.k_proj.weight"], k_full.chunk(tp)[-1])
    proj = "decoder.layers.0.self_attention.linear_proj.weight"
    assert shards[0][proj].shape == (HIDDEN, HEADS * HEAD_DIM // tp)
    assert torch.equal(shards[0]["decoder.final_layernorm.weight"], mg["decoder.final_layernorm.weight"])
    fc1 = (
        "decoder.layers.0.mlp.experts.local_experts.1.linear_fc1.weight"
        if model_type == "qwen3_moe"
        else "decoder.layers.0.mlp.linear_fc1.weight"
    )
    assert shards[0][fc1].shape[0] == mg[fc1].shape[0] // tp


def test_fc1_splits_gate_and_up_separately() -> None:
    layout = MegatronLayout.from_hf(hf_config("llama"))
    hf = hf_state_dict("llama")
    mg = hf_to_megatron(hf, layout)
    fc1 = shard_tp(mg, 2, 1)["decoder.layers.0.mlp.linear_fc1.weight"]
    gate, up = hf["model.layers.0.mlp.gate_proj.weight"], hf["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(fc1, torch.cat([gate.chunk(2)[1], up.chunk(2)[1]]))


@pytest.mark.parametrize(("pp", "vpp", "tied"), [(2, 1, False), (2, 2, True), (4, 1, True), (1, 2, False)])
def test_pipeline_stages_and_gather(pp: int, vpp: int, tied: bool) -> None:
    layout = MegatronLayout.from_hf(hf_config("qwen2", tied))
    mg = hf_to_megatron(hf_state_dict("qwen2", tied), layout)
    stages = [shard_pp(mg, layout, pp, vpp, r) for r in range(pp)]
    assert_same(gather_pp(stages, layout), mg)
    assert "embedding.word_embeddings.weight" in stages[0][0]
    last = stages[-1][-1]
    assert "decoder.final_layernorm.weight" in last and "output_layer.weight" in last
    per = LAYERS // (pp * vpp)
    assert all(f"decoder.layers.{per}.input_layernorm.weight" not in c for s in stages for c in s)
    # interleaving: chunk c of rank r holds virtual stage c * pp + r
    assert list(stage_layers(LAYERS, pp, vpp, 0, vpp - 1)) == list(
        range((vpp - 1) * pp * per, ((vpp - 1) * pp + 1) * per)
    )


def test_expert_parallel_shards_and_gather() -> None:
    layout = MegatronLayout.from_hf(hf_config("qwen3_moe"))
    mg = hf_to_megatron(hf_state_dict("qwen3_moe"), layout)
    shards = [shard_ep(mg, EXPERTS, 2, r) for r in range(2)]
    assert_same(gather_ep(shards, EXPERTS), mg)
    local = "decoder.layers.0.mlp.experts.local_experts.{}.linear_fc2.weight"
    assert torch.equal(shards[1][local.format(0)], mg[local.format(2)])
    assert local.format(2) not in shards[1]


def test_all_parallel_axes_compose() -> None:
    """TP x PP x EP shards of one MoE model gather back to it (the order a checkpoint merge uses)."""
    layout = MegatronLayout.from_hf(hf_config("qwen3_moe", tied=True))
    mg = hf_to_megatron(hf_state_dict("qwen3_moe", tied=True), layout)
    tp, pp, ep = 2, 2, 2
    parts = {
        (t, p, e): shard_pp(shard_ep(shard_tp(mg, tp, t), EXPERTS, ep, e), layout, pp, 1, p)
        for t, p, e in itertools.product(range(tp), range(pp), range(ep))
    }
    by_tp = [
        gather_ep([gather_pp([parts[(t, p, e)] for p in range(pp)], layout) for e in range(ep)], EXPERTS)
        for t in range(tp)
    ]
    assert_same(gather_tp(by_tp), mg)


def test_unmapped_models_are_refused() -> None:
    with pytest.raises(ValueError, match="model_type"):
        MegatronLayout.from_hf({**hf_config(), "model_type": "gemma2"})
    with pytest.raises(ValueError, match="sparse"):
        MegatronLayout.from_hf({**hf_config("qwen3_moe"), "mlp_only_layers": [0]})
    with pytest.raises(KeyError, match="rotary"):
        hf_to_megatron(
            {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(2)},
            MegatronLayout.from_hf(hf_config()),
        )


def test_layout_reads_the_expert_count_of_the_installed_transformers_config() -> None:
    """transformers 5.x writes Qwen3-MoE's expert count as ``num_local_experts`` (4.5x: ``num_experts``);
    either way the layout has the experts (a dense layout here built a dense GPTModel on the GPU)."""
    import transformers

    config = transformers.AutoConfig.for_model(model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2)
    assert MegatronLayout.from_hf(config.to_dict()).num_experts == 4
    assert MegatronLayout.from_hf({**hf_config("qwen3_moe"), "num_experts": EXPERTS}).num_experts == EXPERTS


def test_context_and_sequence_parallel_are_for_dense_models() -> None:
    assert (
        parallel_shape_problem(hf_config("qwen3"), 2, 1, context_parallel=2, sequence_parallel=True) is None
    )
    problem = parallel_shape_problem(hf_config("qwen3_moe"), 1, 1, context_parallel=2)
    assert problem is not None and "context_parallel=2 is built for dense models only" in problem
    problem = parallel_shape_problem(hf_config("qwen3_moe"), 2, 1, sequence_parallel=True)
    assert problem is not None and "sequence_parallel=true is built for dense models only" in problem
