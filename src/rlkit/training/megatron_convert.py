"""Hugging Face <-> Megatron-core ``GPTModel`` state dicts: names, fused layouts and parallel shards.

Pure tensor mapping (no Megatron import), so the round trips are tested anywhere and the engine,
the weight sync and ``rlkit ckpt merge`` share one mapping. The Megatron side is the layout of
``GPTModel`` built with ``get_gpt_layer_local_spec()`` (no transformer-engine):

- ``linear_qkv`` fuses q, k and v per GQA group: for each of the ``num_kv_heads`` groups, its
  ``num_heads / num_kv_heads`` query heads, then its key head, then its value head (rows of
  ``head_dim`` each); the bias (Qwen2) follows the same rows.
- ``linear_fc1`` stacks gate over up (SwiGLU); under tensor parallelism each rank holds its
  slice of gate over its slice of up, not a slice of the stacked matrix.
- Qwen3's q/k norms are ``q_layernorm`` / ``k_layernorm``; tied embeddings have no
  ``output_layer.weight`` (except on a last pipeline stage that does not hold the embedding).
- A value model's ``score`` head (the critic) keeps its name and is never split.
- Qwen3-MoE: ``mlp.router.weight`` is the gate; experts are ``SequentialMLP`` experts,
  ``mlp.experts.local_experts.{j}.linear_fc1/fc2`` with ``j`` local to the expert-parallel rank.
  The Hugging Face side reads per-expert checkpoint names (``mlp.experts.{j}.gate_proj.weight``)
  or transformers 5's fused in-memory ones (``mlp.experts.gate_up_proj``), and writes the
  per-expert names that checkpoints (and vLLM) use.

Parallel shards: tensor parallel (TP) splits column-parallel weights (qkv by whole GQA groups,
fc1 gate and up separately, vocab rows) along dim 0 and row-parallel ones (``linear_proj``,
``linear_fc2``) along dim 1; pipeline parallel (PP, with virtual stages) gives each model chunk
a contiguous range of layers, renumbered from 0; expert parallel (EP) gives each rank a
contiguous range of experts, renumbered from 0. Every split has its exact inverse.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

#: model_type -> whether it is a mixture of experts (the families this converter maps).
FAMILIES = {"llama": False, "qwen2": False, "qwen3": False, "qwen3_moe": True}

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^mlp\.experts\.local_experts\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_HF_EXPERT = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")

#: Megatron layer-local name -> Hugging Face layer-local name, for the one-to-one tensors.
_LAYER_NAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
    "mlp.router.weight": "mlp.gate.weight",
}
_TOP_NAMES = {
    "embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "decoder.final_layernorm.weight": "model.norm.weight",
    "output_layer.weight": "lm_head.weight",
}
#: a value model's scalar head (``*ForTokenClassification``'s ``score``): kept whole, same name both sides
_VALUE_HEAD = "score."
#: split dim of each tensor-parallel weight (by Megatron layer-local or top-level name); others replicate.
_COLUMN = ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias", "mlp.linear_fc1.weight")
_ROW = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")
_VOCAB = ("embedding.word_embeddings.weight", "output_layer.weight")


@dataclass(frozen=True)
class MegatronLayout:
    """The shape facts the mapping needs, read from a Hugging Face ``config.json``."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    num_experts: int = 0

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> MegatronLayout:
        """The layout of a Llama / Qwen2 / Qwen2.5 / Qwen3 / Qwen3-MoE ``config.json`` dict.

        Raises:
            ValueError: The model type, or a feature of it, is outside what the converter maps.
        """
        model_type = str(hf.get("model_type"))
        if model_type not in FAMILIES:
            raise ValueError(f"the Megatron converter maps model_type {sorted(FAMILIES)}, not {model_type!r}")
        if hf.get("mlp_bias") or (model_type == "llama" and hf.get("attention_bias")):
            raise ValueError("the Megatron converter does not map o_proj / MLP biases")
        heads = int(hf["num_attention_heads"])
        # transformers 5.x writes Qwen3-MoE's expert count as num_local_experts, 4.5x as num_experts
        experts = hf.get("num_experts") or hf.get("num_local_experts") or 0
        num_experts = int(experts) if FAMILIES[model_type] else 0
        if num_experts and (hf.get("mlp_only_layers") or int(hf.get("decoder_sparse_step", 1)) != 1):
            raise ValueError("the Megatron converter maps MoE models whose every layer is sparse")
        return cls(
            model_type=model_type,
            num_layers=int(hf["num_hidden_layers"]),
            hidden_size=int(hf["hidden_size"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
            vocab_size=int(hf["vocab_size"]),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            num_experts=num_experts,
        )


def parallel_shape_problem(
    hf: Mapping[str, Any],
    tensor_parallel: int,
    expert_parallel: int,
    pipeline_parallel: int = 1,
    virtual_pipeline: int = 1,
    context_parallel: int = 1,
    sequence_parallel: bool = False,
) -> str | None:
    """Why a ``config.json`` cannot be split by the given sizes (None: it can).

    Tensor parallelism splits attention by whole heads and GQA groups, the MLP's rows and the
    vocabulary; expert parallelism splits the experts; pipeline parallelism gives each stage (each
    model chunk, with virtual stages) an equal run of layers. Context and sequence parallelism
    (any row length: the engine pads rows to fit) are built for dense models only.
    """
    try:
        layout = MegatronLayout.from_hf(hf)
    except ValueError as exc:
        return str(exc)
    tp, ep = tensor_parallel, expert_parallel
    counts = {
        "attention heads": layout.num_heads,
        "key/value heads": layout.num_kv_heads,
        "vocabulary entries": layout.vocab_size,
        "MLP rows (intermediate_size)": int(hf.get("intermediate_size") or 0),
    }
    for what, count in counts.items():
        if count % tp:
            return f"actor.megatron.tensor_parallel={tp} does not divide the model's {count} {what}"
    stages = pipeline_parallel * virtual_pipeline
    if layout.num_layers % stages:
        sizes = f"pipeline_parallel={pipeline_parallel}" + (
            f" x virtual_pipeline={virtual_pipeline} = {stages}" if virtual_pipeline > 1 else ""
        )
        return f"actor.megatron.{sizes} does not divide the model's {layout.num_layers} layers"
    if ep > 1 and (not layout.num_experts or layout.num_experts % ep):
        experts = layout.num_experts or "no"
        return f"actor.megatron.expert_parallel={ep} does not divide the model's {experts} experts"
    if layout.num_experts and (context_parallel > 1 or sequence_parallel):
        key = f"context_parallel={context_parallel}" if context_parallel > 1 else "sequence_parallel=true"
        return f"actor.megatron.{key} is built for dense models only, and this one has {layout.num_experts} experts"
    return None


# ---------------------------------------------------------------- Hugging Face <-> Megatron (full)


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: MegatronLayout) -> torch.Tensor:
    """q (nq*d, ...), k and v (ng*d, ...) -> Megatron's per-group (q heads, k, v) rows."""
    ng, d = layout.num_kv_heads, layout.head_dim
    rest = q.shape[1:]
    groups = [
        q.reshape(ng, layout.heads_per_group * d, *rest),
        k.reshape(ng, d, *rest),
        v.reshape(ng, d, *rest),
    ]
    return torch.cat(groups, dim=1).reshape(-1, *rest)


def _split_qkv(qkv: torch.Tensor, layout: MegatronLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of :func:`_fuse_qkv` for any number of whole groups (a TP shard too)."""
    d, per = layout.head_dim, layout.heads_per_group
    rest = qkv.shape[1:]
    grouped = qkv.reshape(-1, (per + 2) * d, *rest)
    q, k, v = torch.split(grouped, [per * d, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def hf_to_megatron(hf_sd: Mapping[str, torch.Tensor], layout: MegatronLayout) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict -> the unsharded Megatron ``GPTModel`` state dict (global layer numbers).

    Raises:
        KeyError: A tensor of the Hugging Face checkpoint has no Megatron counterpart.
    """
    top = {hf: mg for mg, hf in _TOP_NAMES.items()}
    local = {hf: mg for mg, hf in _LAYER_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in hf_sd.items():
        if name.startswith(_VALUE_HEAD):
            out[name] = tensor  # a value model's head: the same tensor on both sides
            continue
        if name in top:
            if name == "lm_head.weight" and layout.tie_word_embeddings:
                continue  # the embedding is the head
            out[top[name]] = tensor
            continue
        match = _HF_LAYER.match(name)
        if match is None:
            raise KeyError(f"no Megatron name for Hugging Face tensor {name!r}")
        layer, rest = match.groups()
        if rest in local:
            out[f"decoder.layers.{layer}.{local[rest]}"] = tensor
        elif rest not in _FUSED_PARTS and _HF_EXPERT.match(rest) is None:
            raise KeyError(f"no Megatron name for Hugging Face tensor {name!r}")
    for layer in range(layout.num_layers):
        out.update(_fused_layer(hf_sd, layer, layout))
    return out


_FUSED_PARTS = {f"self_attn.{p}_proj.{kind}" for p in "qkv" for kind in ("weight", "bias")} | {
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.experts.gate_up_proj",
    "mlp.experts.down_proj",
}


def _fused_layer(
    hf_sd: Mapping[str, torch.Tensor], layer: int, layout: MegatronLayout
) -> dict[str, torch.Tensor]:
    """The fused tensors of one layer (qkv weight/bias, fc1 of the dense MLP or of each expert)."""
    src, dst = f"model.layers.{layer}.", f"decoder.layers.{layer}."
    out: dict[str, torch.Tensor] = {}
    for kind in ("weight", "bias"):
        q, k, v = (hf_sd.get(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv")
        if q is not None and k is not None and v is not None:
            out[f"{dst}self_attention.linear_qkv.{kind}"] = _fuse_qkv(q, k, v, layout)
    if f"{src}mlp.gate_proj.weight" in hf_sd:
        gate_up = [hf_sd[f"{src}mlp.gate_proj.weight"], hf_sd[f"{src}mlp.up_proj.weight"]]
        out[f"{dst}mlp.linear_fc1.weight"] = torch.cat(gate_up, dim=0)
    fused = hf_sd.get(
        f"{src}mlp.experts.gate_up_proj"
    )  # transformers >= 5 in memory: (E, 2I, D), gate over up
    for j in range(layout.num_experts):
        e, mg = f"{src}mlp.experts.{j}.", f"{dst}mlp.experts.local_experts.{j}."
        if fused is not None:
            out[f"{mg}linear_fc1.weight"] = fused[j]
            out[f"{mg}linear_fc2.weight"] = hf_sd[f"{src}mlp.experts.down_proj"][j]
            continue
        out[f"{mg}linear_fc1.weight"] = torch.cat(
            [hf_sd[f"{e}gate_proj.weight"], hf_sd[f"{e}up_proj.weight"]]
        )
        out[f"{mg}linear_fc2.weight"] = hf_sd[f"{e}down_proj.weight"]
    return out


def megatron_tensor_to_hf(
    name: str, tensor: torch.Tensor, layout: MegatronLayout
) -> list[tuple[str, torch.Tensor]]:
    """One unsharded Megatron tensor (global layer and expert numbers) -> its Hugging Face tensor(s).

    Per tensor, so a weight sync can convert and send as it gathers (no whole state dict at once).

    Raises:
        KeyError: ``name`` is not a tensor of the mapped layout.
    """
    if name in _TOP_NAMES:
        return [(_TOP_NAMES[name], tensor)]
    if name.startswith(_VALUE_HEAD):
        return [(name, tensor)]
    match = _LAYER.match(name)
    if match is None:
        raise KeyError(f"no Hugging Face name for Megatron tensor {name!r}")
    layer, rest = match.groups()
    prefix = f"model.layers.{layer}."
    if rest in _LAYER_NAMES:
        return [(prefix + _LAYER_NAMES[rest], tensor)]
    if rest.startswith("self_attention.linear_qkv."):
        kind = rest.rsplit(".", 1)[1]
        q, k, v = _split_qkv(tensor, layout)
        return [(f"{prefix}self_attn.{p}_proj.{kind}", t) for p, t in zip("qkv", (q, k, v), strict=True)]
    if rest == "mlp.linear_fc1.weight":
        gate, up = tensor.chunk(2, dim=0)
        return [(f"{prefix}mlp.gate_proj.weight", gate), (f"{prefix}mlp.up_proj.weight", up)]
    expert = _EXPERT.match(rest)
    if expert is not None:
        j, part = expert.groups()
        e = f"{prefix}mlp.experts.{j}."
        if part == "linear_fc1.weight":
            gate, up = tensor.chunk(2, dim=0)
            return [(f"{e}gate_proj.weight", gate), (f"{e}up_proj.weight", up)]
        if part == "linear_fc2.weight":
            return [(f"{e}down_proj.weight", tensor)]
    raise KeyError(f"no Hugging Face name for Megatron tensor {name!r}")


def megatron_to_hf(mg_sd: Mapping[str, torch.Tensor], layout: MegatronLayout) -> dict[str, torch.Tensor]:
    """The unsharded Megatron state dict -> Hugging Face names and layouts (inverse of :func:`hf_to_megatron`)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in mg_sd.items():
        if name == "output_layer.weight" and layout.tie_word_embeddings:
            continue  # a tied model's last pipeline stage keeps a copy of the embedding as its head
        out.update(megatron_tensor_to_hf(name, tensor, layout))
    return out


# ---------------------------------------------------------------- tensor parallel


def _local_name(name: str) -> str:
    """The layer-local name, with an expert's ``mlp.experts.local_experts.{j}.`` read as ``mlp.``."""
    match = _LAYER.match(name)
    rest = match.group(2) if match else name
    expert = _EXPERT.match(rest)
    return f"mlp.{expert.group(2)}" if expert else rest


def tp_split_dim(name: str) -> int | None:
    """The dim a tensor is split along under tensor parallelism (None: every rank holds all of it)."""
    local = _local_name(name)
    if local in _COLUMN or name in _VOCAB:
        return 0
    if local in _ROW:
        return 1
    return None


def shard_tensor_tp(name: str, tensor: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s tensor-parallel shard of one unsharded Megatron tensor.

    Column-parallel rows split in ``tp`` equal parts, which for ``linear_qkv`` are whole GQA
    groups (each group's rows are contiguous); ``linear_fc1`` splits gate and up separately.
    """
    dim = tp_split_dim(name)
    if dim is None or tp == 1:
        return tensor
    if tensor.shape[dim] % tp:
        raise ValueError(f"{name}: dim {dim} of size {tensor.shape[dim]} does not split over {tp} ranks")
    if _local_name(name) == "mlp.linear_fc1.weight":
        gate, up = tensor.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]])
    return tensor.chunk(tp, dim=dim)[rank]


def gather_tensor_tp(name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """The unsharded tensor from every tensor-parallel rank's shard, in rank order."""
    dim = tp_split_dim(name)
    if dim is None or len(shards) == 1:
        return shards[0]
    if _local_name(name) == "mlp.linear_fc1.weight":
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])
    return torch.cat(shards, dim=dim)


def shard_tp(mg_sd: Mapping[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
    return {name: shard_tensor_tp(name, t, tp, rank) for name, t in mg_sd.items()}


def gather_tp(shards: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: gather_tensor_tp(name, [s[name] for s in shards]) for name in shards[0]}


# ---------------------------------------------------------------- pipeline (with virtual stages) and experts


def stage_layers(num_layers: int, pp: int, vpp: int, pp_rank: int, chunk: int) -> range:
    """Global layers of model chunk ``chunk`` on pipeline rank ``pp_rank`` (Megatron's interleaving:
    virtual stage ``chunk * pp + pp_rank`` of ``pp * vpp`` equal ones)."""
    stages = pp * vpp
    if num_layers % stages:
        raise ValueError(f"{num_layers} layers do not split into {pp} x {vpp} pipeline stages")
    per = num_layers // stages
    start = (chunk * pp + pp_rank) * per
    return range(start, start + per)


def shard_pp(
    mg_sd: Mapping[str, torch.Tensor], layout: MegatronLayout, pp: int, vpp: int, pp_rank: int
) -> list[dict[str, torch.Tensor]]:
    """The state dicts of pipeline rank ``pp_rank``'s ``vpp`` model chunks (layers renumbered from 0).

    The embedding sits in the first chunk of rank 0, the final norm and head in the last chunk of
    rank ``pp - 1``; with tied embeddings and more than one stage that last chunk holds its own
    copy of the embedding as ``output_layer.weight`` (Megatron keeps the two in sync).
    """
    chunks: list[dict[str, torch.Tensor]] = []
    for chunk in range(vpp):
        layers = stage_layers(layout.num_layers, pp, vpp, pp_rank, chunk)
        first, last = pp_rank == 0 and chunk == 0, pp_rank == pp - 1 and chunk == vpp - 1
        part: dict[str, torch.Tensor] = {}
        for name, tensor in mg_sd.items():
            match = _LAYER.match(name)
            if match is not None:
                layer = int(match.group(1))
                if layer in layers:
                    part[f"decoder.layers.{layer - layers.start}.{match.group(2)}"] = tensor
            elif name == "embedding.word_embeddings.weight":
                if first:
                    part[name] = tensor
                if last and layout.tie_word_embeddings and not first:
                    part["output_layer.weight"] = tensor
            elif last:
                part[name] = tensor
        chunks.append(part)
    return chunks


def gather_pp(
    stages: list[list[Mapping[str, torch.Tensor]]], layout: MegatronLayout
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`shard_pp`: ``stages[pp_rank][chunk]`` -> one state dict, global layers."""
    pp, vpp = len(stages), len(stages[0])
    out: dict[str, torch.Tensor] = {}
    for pp_rank, chunks in enumerate(stages):
        for chunk, part in enumerate(chunks):
            offset = stage_layers(layout.num_layers, pp, vpp, pp_rank, chunk).start
            for name, tensor in part.items():
                match = _LAYER.match(name)
                if match is not None:
                    out[f"decoder.layers.{int(match.group(1)) + offset}.{match.group(2)}"] = tensor
                elif name == "output_layer.weight" and layout.tie_word_embeddings:
                    continue  # the last stage's copy of the embedding
                else:
                    out[name] = tensor
    return out


def _expert_of(name: str) -> tuple[str, int, str] | None:
    """``(layer prefix, expert index, part)`` of an expert tensor, else None."""
    match = _LAYER.match(name)
    if match is None:
        return None
    expert = _EXPERT.match(match.group(2))
    if expert is None:
        return None
    return f"decoder.layers.{match.group(1)}.", int(expert.group(1)), expert.group(2)


def shard_ep(
    mg_sd: Mapping[str, torch.Tensor], num_experts: int, ep: int, rank: int
) -> dict[str, torch.Tensor]:
    """Expert-parallel rank ``rank``'s state dict: its ``num_experts / ep`` experts, renumbered from 0."""
    if num_experts % ep:
        raise ValueError(f"{num_experts} experts do not split over {ep} expert-parallel ranks")
    per = num_experts // ep
    out: dict[str, torch.Tensor] = {}
    for name, tensor in mg_sd.items():
        expert = _expert_of(name)
        if expert is None:
            out[name] = tensor
        elif expert[1] // per == rank:
            prefix, j, part = expert
            out[f"{prefix}mlp.experts.local_experts.{j - rank * per}.{part}"] = tensor
    return out


def global_expert_name(name: str, ep_rank: int, experts_per_rank: int) -> str:
    """The name an EP rank's local expert tensor has in the unsharded state dict (others unchanged)."""
    expert = _expert_of(name)
    if expert is None:
        return name
    prefix, j, part = expert
    return f"{prefix}mlp.experts.local_experts.{j + ep_rank * experts_per_rank}.{part}"


def gather_ep(shards: list[Mapping[str, torch.Tensor]], num_experts: int) -> dict[str, torch.Tensor]:
    """The inverse of :func:`shard_ep` (shards in expert-parallel rank order)."""
    per = num_experts // len(shards)
    out: dict[str, torch.Tensor] = {}
    for rank, shard in enumerate(shards):
        for name, tensor in shard.items():
            out[global_expert_name(name, rank, per)] = tensor
    return out


def shard_key(name: str, tp_rank: int, tp: int) -> str:
    """The checkpoint key of one TP rank's shard of a split weight (replicated weights keep their name)."""
    return f"{name}@tp{tp_rank}of{tp}" if tp > 1 and tp_split_dim(name) is not None else name


def is_megatron_checkpoint(names: Iterator[str] | list[str] | set[str]) -> bool:
    """Whether checkpoint model keys are the Megatron engine's (else Hugging Face names)."""
    return any(n.partition("@")[0] == "embedding.word_embeddings.weight" for n in names)


def checkpoint_to_hf(tensors: Mapping[str, torch.Tensor], hf: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A Megatron engine checkpoint's model tensors (per-shard keys, see :func:`shard_key`) -> HF names.

    The TP shards of each weight are joined in rank order; experts already carry global numbers.
    ``rlkit ckpt merge`` reads Megatron checkpoints through this.
    """
    by_name: dict[str, dict[int, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, shard = key.partition("@tp")
        by_name.setdefault(name, {})[int(shard.split("of")[0]) if shard else 0] = tensor
    full = {
        name: gather_tensor_tp(name, [parts[r] for r in sorted(parts)]) for name, parts in by_name.items()
    }
    return megatron_to_hf(full, MegatronLayout.from_hf(hf))


def iter_hf_tensors(
    mg_items: Iterator[tuple[str, torch.Tensor]], layout: MegatronLayout
) -> Iterator[tuple[str, torch.Tensor]]:
    """Unsharded Megatron ``(name, tensor)`` pairs -> Hugging Face pairs, one tensor at a time."""
    for name, tensor in mg_items:
        yield from megatron_tensor_to_hf(name, tensor, layout)
