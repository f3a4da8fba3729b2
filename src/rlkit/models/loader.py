"""Build a causal LM from a model folder or a built-in name: native when it can, transformers otherwise.

``load_causal_lm`` returns the native ``CausalLM`` for the Llama / Qwen2 / Qwen2.5 / Qwen3 family
(when the config uses only what the native decoder implements: SiLU MLP without bias, full
attention, default or Llama-3 rope) and an ``HFCausalLM`` wrapper with the same methods for
everything else. Weights are read from safetensors only and copied tensor by tensor, so peak host
memory is the model plus one tensor.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import nn

from rlkit.data.hub import resolve_model_path
from rlkit.errors import UserError
from rlkit.models.decoder import ARCHITECTURES, CausalLM, DecoderConfig, RMSNorm, _rope_inv_freq
from rlkit.models.hf_io import iter_checkpoint_tensors, load_hf_config
from rlkit.models.tiny import builtin_name, packaged_checkpoint, tiny_config
from rlkit.models.tokenizer import BUILTIN_PREFIX

Init = Literal["pretrained", "random"]
INIT_STD = 0.02  # Hugging Face's default initializer_range
_NATIVE_ROPE_TYPES = ("default", "llama3")


def native_unsupported_reason(hf: dict[str, Any]) -> str | None:
    """Why the native decoder cannot run this ``config.json`` (None when it can)."""
    arch = hf.get("model_type")
    if arch not in ARCHITECTURES:
        return f"model_type {arch!r} is not one of {sorted(ARCHITECTURES)}"
    if hf.get("hidden_act", "silu") != "silu":
        return f"hidden_act {hf['hidden_act']!r}"
    if hf.get("mlp_bias"):
        return "mlp_bias"
    layer_types = hf.get("layer_types") or []
    if hf.get("use_sliding_window") or any(t != "full_attention" for t in layer_types):
        return "sliding-window attention"
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in _NATIVE_ROPE_TYPES:
        return f"rope type {rope_type!r}"
    return None


def model_config(path: str | os.PathLike[str]) -> DecoderConfig:
    """The architecture of a model folder or built-in name, without loading weights.

    For a non-native architecture the result is a best-effort ``DecoderConfig`` whose
    ``architecture`` is the Hugging Face ``model_type`` (``to_hf`` is not available for it).
    """
    path = resolve_model_path(path)
    if path.startswith(BUILTIN_PREFIX) and packaged_checkpoint(path) is None:
        return tiny_config(path)
    hf = load_hf_config(path)
    if native_unsupported_reason(hf) is None:
        return DecoderConfig.from_hf(hf)
    from rlkit.models.hf_fallback import foreign_config

    return foreign_config(_hf_config_object(hf, path))


def _hf_config_object(hf: dict[str, Any], path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(**hf)
    except (KeyError, ValueError) as exc:
        raise UserError(
            f"model.path: {path!r} has model_type {hf.get('model_type')!r}, which this transformers "
            "version does not know",
            hint="rlkit never runs remote code; upgrade transformers or convert the model",
        ) from exc


def init_weights(model: nn.Module, seed: int, std: float = INIT_STD) -> None:
    """Seeded Hugging Face-style init: normal(0, std) for Linear and Embedding, zero biases, unit norms.

    The same seed gives the same weights on the same device type (the generator lives on the
    parameters' device, so CPU and CUDA draws differ).
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std, generator=gen)
                bias = getattr(module, "bias", None)
                if bias is not None:
                    bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)


def materialize(model: nn.Module, cfg: DecoderConfig, device: str | torch.device) -> None:
    """Allocate a meta-built native model on ``device``: re-tie embeddings, recompute rope tables in fp32."""
    model.to_empty(device=device)
    backbone: Any = model.model
    lm_head: Any = getattr(model, "lm_head", None)
    if cfg.tie_word_embeddings and lm_head is not None:
        lm_head.weight = backbone.embed_tokens.weight
    # rope tables are non-persistent buffers: to_empty leaves garbage and they must stay fp32.
    backbone.rotary.inv_freq = _rope_inv_freq(cfg).to(device)


def copy_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    ignore_prefixes: tuple[str, ...] = (),
    optional_prefixes: tuple[str, ...] = (),
) -> set[str]:
    """Copy a folder's safetensors into ``model``'s tensors by name, one tensor at a time.

    A tied ``lm_head.weight`` may be absent (it shares the embedding). Checkpoint names starting
    with ``ignore_prefixes`` are skipped; model names starting with ``optional_prefixes`` may be
    missing (the caller initialises them).

    Returns:
        The model names that were loaded.

    Raises:
        UserError: a name or shape in the checkpoint does not match the model.
    """
    targets = model.state_dict(keep_vars=True)
    device = next(iter(targets.values())).device
    loaded: set[str] = set()
    unexpected: list[str] = []
    with torch.no_grad():
        for name, tensor in iter_checkpoint_tensors(path, device):
            if name.endswith("rotary_emb.inv_freq") or name.startswith(ignore_prefixes):
                continue
            target = targets.get(name)
            if target is None:
                unexpected.append(name)
                continue
            if target.shape != tensor.shape:
                raise UserError(
                    f"model.path: {name} has shape {tuple(tensor.shape)} in {os.fspath(path)!r} "
                    f"but the config says {tuple(target.shape)}",
                    hint="config.json and the weights disagree; re-export the checkpoint",
                )
            target.copy_(tensor)
            loaded.add(name)
    missing = {n for n in targets if n not in loaded and not n.startswith(optional_prefixes)}
    if "lm_head.weight" in missing and targets["lm_head.weight"] is targets.get("model.embed_tokens.weight"):
        missing.discard("lm_head.weight")
    if missing or unexpected:
        raise UserError(
            f"model.path: {os.fspath(path)!r} does not match its config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}",
            hint="the checkpoint is incomplete or of another architecture",
        )
    return loaded


def build_native(
    cfg: DecoderConfig,
    *,
    weights: str | os.PathLike[str] | None,
    dtype: torch.dtype,
    device: str | torch.device,
    seed: int,
) -> CausalLM:
    """A native ``CausalLM`` in eval mode, from ``weights`` (a folder) or seeded random init.

    ``device="meta"`` returns the unallocated structure (for sharding before materialising).
    """
    with torch.device("meta"):
        model = CausalLM(cfg)
    model.to(dtype)
    if torch.device(device).type == "meta":
        return model.eval()
    materialize(model, cfg, device)
    if weights is not None:
        copy_checkpoint(model, weights)
    else:
        init_weights(model, seed)
    return model.eval()


def load_causal_lm(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    init: Init = "pretrained",
    seed: int = 0,
) -> nn.Module:
    """Load a causal LM: native ``CausalLM`` for the Llama/Qwen family, else an ``HFCausalLM``.

    Both expose ``forward(input_ids_BL, attention_mask_BL) -> logits_BLV``,
    ``forward_packed(input_ids_T, position_ids_T, cu_seqlens) -> hidden_TD``, ``lm_head``,
    ``config`` and ``set_gradient_checkpointing``. The model is returned in eval mode (as
    ``from_pretrained`` does): call ``.train()`` before training, which gradient checkpointing
    needs to take effect.

    Args:
        path: a local Hugging Face model folder, a Hub id ``ORG/NAME`` (read from the Hugging Face
            cache, downloaded into it once when missing), or ``builtin:tiny``. For ``builtin:tiny``,
            ``init="pretrained"`` loads the packaged checkpoint when the package ships one in
            ``rlkit/models/assets/tiny/`` and is otherwise the same as ``init="random"``.
        dtype: parameter dtype (rope tables stay fp32).
        device: where the parameters live; ``"meta"`` gives an unallocated native model.
        init: ``"pretrained"`` reads the safetensors weights; ``"random"`` builds the architecture
            from ``config.json`` with seeded normal(0, 0.02) weights (benchmarks, tests).
        seed: seed of the random init.

    Raises:
        UserError: a missing folder, config or weights, pickle-only weights, an unknown
            ``init``, weights that do not match the config, or a Hub id not cached while offline.
    """
    if init not in ("pretrained", "random"):
        raise UserError(f"model init must be 'pretrained' or 'random', got {init!r}")
    path = os.fspath(path)
    if path.startswith(BUILTIN_PREFIX):
        packaged = packaged_checkpoint(builtin_name(path))
        if packaged is None or init == "random":
            return build_native(tiny_config(path), weights=None, dtype=dtype, device=device, seed=seed)
        path = str(packaged)
    path = resolve_model_path(path)  # a Hub id -> its snapshot folder in the Hugging Face cache
    hf = load_hf_config(path)
    if native_unsupported_reason(hf) is None:
        weights = path if init == "pretrained" else None
        return build_native(DecoderConfig.from_hf(hf), weights=weights, dtype=dtype, device=device, seed=seed)
    from rlkit.models.hf_fallback import HFCausalLM

    return HFCausalLM.load(
        path, _hf_config_object(hf, path), dtype=dtype, device=device, init=init, seed=seed
    )


def export_builtin(
    path: str,
    out_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> str:
    """Write a built-in model (``builtin:NAME``) as a Hugging Face folder an outside engine can load.

    The folder gets ``config.json``, safetensors weights (the packaged ones, or the seeded random
    init of a random-init built-in, as :func:`load_causal_lm` gives them for ``seed``) and the
    built-in tokenizer with its chat template (``save_pretrained``).

    Args:
        path: ``builtin:NAME``.
        out_dir: the folder to write (replaced if it exists).
        dtype: dtype of the weights written.
        seed: seed of a random-init built-in's weights.

    Returns:
        The folder written, as a string.
    """
    from rlkit.models.hf_io import save_hf
    from rlkit.models.tokenizer import build_tokenizer

    builtin_name(path)  # validates the name
    model = load_causal_lm(path, dtype=dtype, device="cpu", seed=seed)
    return str(save_hf(model, out_dir, tokenizer=build_tokenizer(), dtype=dtype))
