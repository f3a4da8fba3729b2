"""Sharded checkpoint -> full Hugging Face weights: ``rlkit ckpt merge`` and ``rlkit generate CKPT``.

The shards of every rank are read with DCP in this one process, without a process group, into
full CPU tensors allocated from the checkpoint's own metadata; names are already Hugging Face's
(the training roots keep the model's parameter names). LoRA adapters (``lora_rank`` > 0, SFT or RL)
are folded into their base weights (``W + alpha / r * B @ A``), or exported as a PEFT adapter
folder. The role's ``config.json`` and the tokenizer come from the checkpoint itself, so merging
needs nothing but the checkpoint folder.

Shape legend: B = probe rows, L = probe length, V = vocabulary.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlkit.ckpt.dcp_io import load_full_tensors
from rlkit.ckpt.layout import (
    CONFIG,
    DCP_DIR,
    ROLE_HF_CONFIG,
    ROLE_STATE,
    TOKENIZER_DIR,
    console,
    read_json,
    verify_checkpoint,
)
from rlkit.errors import UserError
from rlkit.models import (
    CausalLM,
    DecoderConfig,
    ValueModel,
    load_tokenizer,
    materialize,
    native_unsupported_reason,
    write_hf_folder,
)
from rlkit.outputs import check_output_dir, install_files
from rlkit.training.megatron_convert import checkpoint_to_hf, is_megatron_checkpoint

DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_MODEL_PREFIX = "model."  # DCP key prefix of the model tensors (rlkit.ckpt.state)


@dataclass
class RoleWeights:
    """One trained role of a checkpoint as full tensors under Hugging Face names."""

    role: str
    hf_config: dict[str, Any]
    tensors: dict[str, torch.Tensor]  # LoRA merged, a tied lm_head dropped
    lora: dict[str, Any] | None = None
    adapter: dict[str, torch.Tensor] = field(default_factory=dict)  # raw LoRA tensors (PEFT-injected names)
    base_model: str | None = None

    @property
    def is_value_model(self) -> bool:
        return any(a.endswith("ForTokenClassification") for a in self.hf_config.get("architectures") or [])


def pick_role(manifest: dict[str, Any], role: str | None, folder: Path) -> str:
    roles = list(manifest["roles"])
    if role is None:
        return roles[0] if len(roles) == 1 else "actor" if "actor" in roles else roles[0]
    if role not in roles:
        raise UserError(f"checkpoint {folder} has no role {role!r}", hint=f"it has: {', '.join(roles)}")
    return role


def load_role_weights(step_dir: str | os.PathLike[str], role: str | None = None) -> RoleWeights:
    """Verify a checkpoint and read one role's full weights (no process group needed).

    Raises:
        UserError: A damaged checkpoint, an unknown role, or LoRA tensors that do not fit.
    """
    folder = Path(step_dir).expanduser().resolve()
    manifest = verify_checkpoint(folder)
    role = pick_role(manifest, role, folder)
    rest = read_json(folder / role / ROLE_STATE)
    hf_config = dict(read_json(folder / role / ROLE_HF_CONFIG))
    raw = load_full_tensors(folder / role / DCP_DIR, _MODEL_PREFIX)
    if is_megatron_checkpoint(list(raw)):  # actor.strategy=megatron: Megatron names and TP shards
        raw = checkpoint_to_hf(raw, hf_config)
    lora = rest.get("lora")
    adapter: dict[str, torch.Tensor] = {}
    if lora or any(".lora_A." in n for n in raw):
        # training.lora is a pure tensor/PEFT utility; imported only for LoRA checkpoints
        from rlkit.training.lora import is_lora_name, merge_lora_tensors

        if not lora:
            raise UserError(
                f"checkpoint file {folder / role / ROLE_STATE} lacks the LoRA settings its tensors need"
            )
        adapter = {n: t for n, t in raw.items() if is_lora_name(n)}
        raw = merge_lora_tensors(raw, float(lora["alpha"]) / float(lora["rank"]))
    if (
        hf_config.get("tie_word_embeddings")
        and "lm_head.weight" in raw
        and "model.embed_tokens.weight" in raw
    ):
        raw.pop("lm_head.weight")  # the same tensor; Hugging Face folders store it once
    return RoleWeights(role, hf_config, raw, lora, adapter, _base_model(folder))


def _base_model(folder: Path) -> str | None:
    """``model.path`` of the checkpoint's config (names the base of an exported adapter)."""
    from omegaconf import OmegaConf

    try:
        return str(OmegaConf.load(folder / CONFIG).model.path)
    except Exception:  # only a label: a config without it leaves the adapter's base unnamed
        return None


def _copy_into(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy ``tensors`` into ``model`` by name (casting); every model tensor must be covered."""
    targets = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in tensors.items():
            target = targets.get(name)
            if target is None or target.shape != tensor.shape:
                got = None if target is None else tuple(target.shape)
                raise UserError(
                    f"{where}: {name} {tuple(tensor.shape)} does not fit the model from its config ({got})"
                )
            target.copy_(tensor)
    tied = getattr(getattr(model, "lm_head", None), "weight", None)
    embed = targets.get("model.embed_tokens.weight")
    missing = [n for n, t in targets.items() if n not in tensors and not (t is tied and tied is embed)]
    if missing:
        raise UserError(f"{where}: the checkpoint lacks {missing[:3]}")


def build_model(weights: RoleWeights, *, dtype: torch.dtype, device: str | torch.device) -> nn.Module:
    """The role's model (native, else transformers) holding the weights, in eval mode."""
    hf = weights.hf_config
    where = f"checkpoint role {weights.role}"
    if native_unsupported_reason(hf) is None:
        cfg = DecoderConfig.from_hf(hf)
        with torch.device("meta"):
            model: nn.Module = ValueModel(cfg) if weights.is_value_model else CausalLM(cfg)
        model.to(dtype)
        materialize(model, cfg, device)
    elif weights.is_value_model:
        raise UserError(
            f"{where}: a value model of model_type {hf.get('model_type')!r} can only be merged, not loaded"
        )
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        from rlkit.models import HFCausalLM

        model = HFCausalLM(
            AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf), dtype=dtype).to(device)
        )
    _copy_into(model, weights.tensors, where)
    return model.eval()


def load_checkpoint_model(
    step_dir: str | os.PathLike[str], *, dtype: torch.dtype, device: str | torch.device, role: str = "actor"
) -> nn.Module:
    """A checkpoint role's model, built in memory from its shards the way ``merge`` reads them."""
    return build_model(load_role_weights(step_dir, role), dtype=dtype, device=device)


def load_checkpoint_tokenizer(step_dir: str | os.PathLike[str]) -> Any:
    """The tokenizer saved in a checkpoint folder."""
    return load_tokenizer(str(Path(step_dir).expanduser().resolve() / TOKENIZER_DIR))


@dataclass
class MergeResult:
    out: Path
    role: str
    num_tensors: int
    max_abs_diff: float | None = None  # of the probe logits, with --verify
    adapter: bool = False


def merge_checkpoint(
    step_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    role: str | None = None,
    dtype: str = "auto",
    verify: bool = False,
    adapter: bool = False,
    force: bool = False,
) -> MergeResult:
    """Write a checkpoint role as a Hugging Face folder (or, with ``adapter``, a PEFT adapter folder).

    Args:
        step_dir: ``RUN/checkpoints/step_N``.
        out_dir: Destination folder: new or empty, or (``force``) one whose files of the same names
            are replaced (and old weight shards removed); nothing else in it is touched. A folder
            that is, contains or lies inside the checkpoint or its run folder is always refused.
        role: ``actor`` or ``critic`` (default: the only role, else the actor).
        dtype: ``auto`` (as stored: the fp32 master weights), ``bfloat16``, ``float16``, ``float32``.
        verify: Load the result back with transformers and compare its logits with the checkpoint's.
        adapter: Write only the LoRA adapters (PEFT format) instead of merged weights.
        force: Write into a non-empty ``out_dir``.

    Raises:
        UserError: A damaged checkpoint, a bad option or output folder, or (``verify``) a mismatch.
    """
    if dtype not in DTYPES:
        raise UserError(f"--dtype: unknown {dtype!r}", hint=f"choose from {', '.join(DTYPES)}")
    folder = Path(step_dir).expanduser().resolve()
    out = _check_out(Path(out_dir), folder, force)
    weights = load_role_weights(folder, role)
    tokenizer = load_checkpoint_tokenizer(folder)
    if adapter and not weights.lora:
        raise UserError(f"--adapter: checkpoint role {weights.role} has no LoRA adapters")
    staging = out.parent / f".{out.name}.merge-{uuid.uuid4().hex[:8]}"
    try:
        count = _write(staging, weights, tokenizer, dtype, adapter)
        removed = install_files(staging, out, stale=_STALE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if removed:
        console.print(f"[dim]{out}: removed the old {', '.join(removed)} (not part of this merge)[/]")
    result = MergeResult(out, weights.role, count, adapter=adapter)
    if verify and not adapter:
        from rlkit.ckpt.verify import verify_merged

        result.max_abs_diff = verify_merged(out, weights, DTYPES[dtype])
    return result


# Files of an earlier merge that a new one replaces even when it does not write them (other shards).
_STALE = ("*.safetensors", "*.safetensors.index.json")


def _check_out(out: Path, folder: Path, force: bool) -> Path:
    """Refuse an output folder that would overwrite a user's files or the checkpoint's run."""
    protected = [(folder, "the checkpoint")]
    if folder.parent.name == "checkpoints":
        protected.append((folder.parent.parent, "the checkpoint's run folder"))
    return check_output_dir(out, force=force, protected=protected)


def _write(staging: Path, weights: RoleWeights, tokenizer: Any, dtype: str, adapter: bool) -> int:
    """Write the merged model (or the adapter) and the tokenizer into the new folder ``staging``."""
    if adapter:
        assert weights.lora is not None
        from rlkit.training.lora import write_adapter_folder

        write_adapter_folder(
            staging,
            weights.adapter,
            rank=int(weights.lora["rank"]),
            alpha=int(weights.lora["alpha"]),
            target_modules=list(weights.lora["target_modules"]),
            base_model=weights.base_model,
        )
        tokenizer.save_pretrained(str(staging))
        return len(weights.adapter)
    write_hf_folder(staging, weights.hf_config, weights.tensors, tokenizer=tokenizer, dtype=DTYPES[dtype])
    return len(weights.tensors)
