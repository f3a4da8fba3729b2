"""LoRA through PEFT on rlkit's models: inject adapters, merge them back, write a PEFT adapter folder.

PEFT's ``get_peft_model`` expects a transformers ``PreTrainedModel``; rlkit's native ``CausalLM`` is
a plain ``nn.Module``, so adapters go in with ``peft.inject_adapter_in_model``, which replaces the
targeted ``nn.Linear`` modules by ``peft`` LoRA layers in place. Parameter names then gain PEFT's
infixes (``q_proj.base_layer.weight``, ``q_proj.lora_A.default.weight``); the functions here map
them back: :func:`merge_lora_tensors` folds ``W + scale * B @ A`` into the Hugging Face names
(what ``merge_and_unload`` gives), :func:`adapter_state_dict` renames the adapter tensors to the
keys PEFT's ``save_pretrained`` writes, so ``PeftModel.from_pretrained`` loads them.

``all-linear`` means every linear layer of the decoder blocks: the LM head (and with it a tied
embedding) is never adapted, as PEFT does for transformers models.

Shape legend: O = output features, I = input features, r = LoRA rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from rlkit.errors import UserError

ALL_LINEAR = "all-linear"
ADAPTER_NAME = "default"
_LORA_INFIXES = (".lora_A.", ".lora_B.")
_PEFT_PREFIX = "base_model.model."


def _is_linear(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2 style) is a linear layer with a transposed weight; PEFT handles both.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def resolve_target_modules(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Module-name suffixes to adapt: ``all-linear`` expanded to the linear layers outside the LM head.

    Raises:
        UserError: A named target matches no linear module of the model.
    """
    head = getattr(model, "lm_head", None)
    head_weight = getattr(head, "weight", None)
    linear_names = [
        name
        for name, module in model.named_modules()
        if _is_linear(module) and module is not head and getattr(module, "weight", None) is not head_weight
    ]
    suffixes = {name.rsplit(".", 1)[-1] for name in linear_names}
    out: set[str] = set()
    for target in targets:
        if target == ALL_LINEAR:
            out |= suffixes
        elif target in suffixes:
            out.add(target)
        else:
            raise UserError(
                f"model.lora_target_modules: no linear module named {target!r} in this model",
                hint=f"choose from {ALL_LINEAR}, {', '.join(sorted(suffixes))}",
            )
    return sorted(out)


def lora_config(rank: int, alpha: int, target_modules: list[str], base_model: str | None = None) -> Any:
    """The ``peft.LoraConfig`` rlkit uses: no dropout (log-probs must be deterministic), no bias."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=target_modules,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    )


def inject_lora(model: nn.Module, rank: int, alpha: int, targets: Sequence[str]) -> list[str]:
    """Add LoRA adapters to ``model`` in place and freeze everything but them.

    PEFT initialises ``A`` randomly (from torch's default generator: seed it first) and ``B`` to
    zero, so the adapted model starts equal to the base model.

    Returns:
        The resolved target module suffixes.

    Raises:
        UserError: ``rank`` < 1, ``alpha`` <= 0, or an unknown target module.
    """
    from peft import inject_adapter_in_model

    if rank < 1 or alpha <= 0:
        raise UserError(f"LoRA needs model.lora_rank >= 1 and model.lora_alpha > 0, got {rank} and {alpha}")
    resolved = resolve_target_modules(model, targets)
    inject_adapter_in_model(lora_config(rank, alpha, resolved), model, adapter_name=ADAPTER_NAME)
    for name, param in model.named_parameters():
        param.requires_grad_(any(infix in name for infix in _LORA_INFIXES))
    return resolved


def is_lora_name(name: str) -> bool:
    return any(infix in name for infix in _LORA_INFIXES)


def merge_lora_tensors(tensors: Mapping[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Fold every adapter into its base weight: Hugging Face names, ``W' = W + scaling * B @ A``.

    The merge runs in fp32 and the result keeps the base weight's dtype. Names lose PEFT's
    ``.base_layer`` infix; adapter tensors disappear.

    Args:
        tensors: Full (gathered) tensors by the adapted model's parameter names.
        scaling: ``lora_alpha / lora_rank``.

    Shape:
        ``X.lora_A.default.weight``: (r, I); ``X.lora_B.default.weight``: (O, r);
        ``X.base_layer.weight``: (O, I) (``nn.Linear``) or (I, O) (``Conv1D``, stored transposed).
    """
    return dict(iter_merged(tensors.items(), scaling))


def iter_merged(
    named_tensors: Iterable[tuple[str, torch.Tensor]], scaling: float, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """:func:`merge_lora_tensors` as a stream: each merged weight as soon as its ``A`` and ``B`` came.

    A PEFT layer lists its ``base_layer`` tensors, then ``lora_A``, then ``lora_B``, so at most one
    base weight waits at a time: a weight push of a LoRA model never holds the whole model twice.
    ``dtype`` (floating tensors only) is applied after the fp32 merge.
    """
    waiting: dict[str, dict[str, torch.Tensor]] = {}  # layer prefix -> its base weight, A and B so far
    for name, tensor in named_tensors:
        if ".base_layer." in name:
            prefix, leaf = name.split(".base_layer.", 1)
            if leaf == "weight":
                waiting.setdefault(prefix, {})["weight"] = tensor
                yield from _fold_ready(waiting, prefix, scaling, dtype)
            else:  # a bias: adapters do not touch it
                yield f"{prefix}.{leaf}", _cast(tensor, dtype)
        elif is_lora_name(name):
            prefix, rest = name.split(".lora_", 1)
            waiting.setdefault(prefix, {})[rest[0]] = tensor  # "A" or "B"
            yield from _fold_ready(waiting, prefix, scaling, dtype)
        else:
            yield name, _cast(tensor, dtype)
    for prefix, parts in waiting.items():  # a base weight whose adapter never came stays as it is
        if "weight" in parts:
            yield f"{prefix}.weight", _cast(parts["weight"], dtype)


def _fold_ready(
    waiting: dict[str, dict[str, torch.Tensor]], prefix: str, scaling: float, dtype: torch.dtype | None
) -> Iterator[tuple[str, torch.Tensor]]:
    parts = waiting[prefix]
    if not {"weight", "A", "B"} <= parts.keys():
        return
    del waiting[prefix]
    weight = parts["weight"]
    delta = scaling * (parts["B"].float() @ parts["A"].float())
    if delta.shape != weight.shape:
        delta = delta.T  # Conv1D keeps its weight as (in, out)
    yield f"{prefix}.weight", (weight.float() + delta).to(dtype or weight.dtype)


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


@contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """Run ``module`` as its base model: every LoRA layer skips its adapter (verl's reference policy).

    PEFT's ``enable_adapters`` also sets the adapters' ``requires_grad`` (off, then back on), so
    the trainable set is the same afterwards.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


class LoraRole:
    """What a trained role with optional LoRA adapters (``SFTRole``, ``ActorRole``) shares.

    The role calls :meth:`add_lora` on its model before the engine shards it, and sets
    ``self.engine``; :meth:`named_full_tensors` then gives the model's weights with the adapters
    merged in, which is what exports and rollout engines load.
    """

    engine: Any  # rlkit.training.engine.FSDPEngine (not imported: this module stays a tensor utility)
    lora_rank: int
    lora_alpha: int
    lora_targets: list[str]

    def add_lora(self, model: nn.Module, rank: int, alpha: int, targets: Sequence[str]) -> None:
        """Inject adapters into ``model`` when ``rank`` > 0 (see :func:`inject_lora`)."""
        self.lora_rank, self.lora_alpha = rank, alpha
        self.lora_targets = inject_lora(model, rank, alpha, list(targets)) if rank > 0 else []

    @property
    def lora_scaling(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank > 0 else 0.0

    def named_full_tensors(
        self, dtype: torch.dtype | None = torch.bfloat16
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Hugging Face names and full tensors, one at a time (collective: all ranks iterate together).

        With LoRA each adapted weight comes merged (``W + scale * B @ A``; the tensors are gathered
        in fp32, merged layer by layer, then cast to ``dtype``) under the base model's name.
        """
        if not self.lora_targets:
            return self.engine.named_full_tensors(dtype)  # type: ignore[no-any-return]
        return iter_merged(self.engine.named_full_tensors(None), self.lora_scaling, dtype)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The full fp32 LoRA tensors by their PEFT-injected names (collective; empty without LoRA)."""
        if not self.lora_targets:
            return {}
        return {n: t for n, t in self.engine.named_full_tensors(None) if is_lora_name(n)}


def adapter_state_dict(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors under the keys PEFT saves (``base_model.model.X.lora_A.weight``)."""
    return {
        _PEFT_PREFIX + name.replace(f".{ADAPTER_NAME}.", "."): tensor
        for name, tensor in tensors.items()
        if is_lora_name(name)
    }


def write_adapter_folder(
    out_dir: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    *,
    rank: int,
    alpha: int,
    target_modules: list[str],
    base_model: str | None,
) -> Path:
    """Write a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).

    ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), out_dir)`` loads
    it; ``base_model`` should therefore name a Hugging Face folder of the base weights.
    """
    out = Path(out_dir).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    adapter = {k: v.detach().to("cpu").contiguous() for k, v in adapter_state_dict(tensors).items()}
    if not adapter:
        raise ValueError("no LoRA tensors to write: the model has no adapters")
    save_file(adapter, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    # PEFT's own writer, so the file is exactly what PeftModel.from_pretrained expects.
    lora_config(rank, alpha, target_modules, base_model).save_pretrained(str(out))
    return out
