"""Hugging Face checkpoint folders: read and write ``config.json`` and safetensors weights.

Only safetensors is read or written (never ``torch.load``/pickle: a checkpoint must not be able to
run code). Folders follow Hugging Face's layout exactly, so ``from_pretrained`` loads what
``save_hf`` writes: ``config.json``, ``generation_config.json``, ``model.safetensors`` or
``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``, and tokenizer files.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from rlkit.data.hub import resolve_model_path
from rlkit.errors import UserError
from rlkit.models.tokenizer import BUILTIN_PREFIX, stop_token_ids

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


def _model_dir(path: str | os.PathLike[str]) -> Path:
    """The local folder of a model path or Hub id (see :func:`rlkit.data.hub.resolve_model_path`)."""
    folder = Path(resolve_model_path(path)).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"model.path: no such folder {os.fspath(path)!r}",
            hint="pass a local model folder, a Hub id ORG/NAME or builtin:tiny",
        )
    return folder


def load_hf_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a model folder or Hub id as a dict (``builtin:*``: the built-in config).

    A Hub id is downloaded into the Hugging Face cache here when it is not there yet (the driver
    calls this before Ray starts, so the workers find it cached).

    Raises:
        UserError: the folder or its config.json is missing or not valid JSON; a Hub id that is
            not cached while offline, or cannot be downloaded.
    """
    if os.fspath(path).startswith(BUILTIN_PREFIX):
        from rlkit.models.tiny import packaged_checkpoint, tiny_config

        packaged = packaged_checkpoint(os.fspath(path))
        return load_hf_config(packaged) if packaged else tiny_config(os.fspath(path)).to_hf()
    config_file = _model_dir(path) / "config.json"
    if not config_file.is_file():
        raise UserError(
            f"model.path: {os.fspath(path)!r} has no config.json",
            hint="a Hugging Face model folder holds config.json next to its *.safetensors weights",
        )
    try:
        config: dict[str, Any] = json.loads(config_file.read_text())
        return config
    except json.JSONDecodeError as exc:
        raise UserError(f"model.path: {config_file} is not valid JSON: {exc}") from exc


def checkpoint_files(path: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a model folder (one, or the shards its index names).

    Raises:
        UserError: no safetensors weights (a ``*.bin``-only folder is told to convert), a bad
            index, or a shard the index names is missing.
    """
    folder = _model_dir(path)
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"model.path: corrupt safetensors index {index}: {exc}") from exc
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"model.path: {index} names missing shard(s) {missing}")
        return files
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise UserError(
            f"model.path: {folder} has only pickle (*.bin/*.pt) weights, which rlkit does not load",
            hint="convert them to safetensors, e.g. AutoModelForCausalLM.from_pretrained(p)"
            ".save_pretrained(out, safe_serialization=True)",
        )
    raise UserError(f"model.path: {folder} holds no model.safetensors or {INDEX_FILE}")


def iter_checkpoint_tensors(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` one at a time, so a caller can copy without holding all of them."""
    for file in checkpoint_files(path):
        try:
            with safe_open(str(file), framework="pt", device=str(device)) as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                    yield name, f.get_tensor(name)
        except SafetensorError as exc:
            raise UserError(f"model.path: corrupt safetensors file {file}: {exc}") from exc


def load_state_dict(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """All tensors of a model folder (single-file or sharded safetensors), keyed by HF names."""
    return dict(iter_checkpoint_tensors(path, device))


def _dedupe_tied(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop later names of tensors that share storage (tied lm_head), keeping the first, as HF does."""
    seen: set[tuple[int, int, tuple[int, ...], torch.device]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        key = (
            tensor.untyped_storage().data_ptr(),
            int(tensor.storage_offset()),
            tuple(tensor.shape),
            tensor.device,
        )
        if tensor.numel() > 0 and key in seen:
            continue
        seen.add(key)
        out[name] = tensor
    return out


def _plan_shards(
    state_dict: Mapping[str, torch.Tensor], max_shard_bytes: int, dtype: torch.dtype | None
) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in state_dict.items():
        itemsize = (dtype or tensor.dtype).itemsize if tensor.is_floating_point() else tensor.element_size()
        nbytes = tensor.numel() * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _cpu_tensor(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach()
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.to("cpu").contiguous()


def _write_weights(
    folder: Path, state_dict: Mapping[str, torch.Tensor], max_shard_bytes: int, dtype: torch.dtype | None
) -> None:
    shards = _plan_shards(state_dict, max_shard_bytes, dtype)
    if len(shards) == 1:
        tensors = {n: _cpu_tensor(state_dict[n], dtype) for n in shards[0]}
        save_file(tensors, str(folder / SINGLE_FILE), metadata={"format": "pt"})
        return
    weight_map: dict[str, str] = {}
    total = 0
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: _cpu_tensor(state_dict[n], dtype) for n in names}  # one shard in host memory at a time
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``; an existing ``out`` is kept aside until the new one is in place."""
    if not out.exists():
        os.replace(tmp, out)
        return
    backup = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out, backup)
    os.replace(tmp, out)
    shutil.rmtree(backup, ignore_errors=True)


def write_hf_folder(
    out_dir: str | os.PathLike[str],
    hf_config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    tokenizer: Any = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: torch.dtype | None = None,
    generation_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Hugging Face model folder atomically (a temporary sibling folder, then a rename).

    Tensors sharing storage are written once under their first name (HF omits a tied lm_head).
    ``generation_config.json`` gets the config's bos/pad ids and, as eos, the tokenizer's stop
    tokens when a tokenizer is given (eos and ``<|im_end|>``), else the config's eos;
    ``generation_config`` entries override these.

    Args:
        out_dir: destination folder; replaced if it exists.
        hf_config: the ``config.json`` dict.
        state_dict: plain tensors keyed by Hugging Face names (any device; copied to host shard by
            shard). Gather FSDP/DTensor shards into full tensors first.
        tokenizer: saved with ``save_pretrained`` when given.
        max_shard_bytes: above this many bytes the weights are split into shards plus an index.
        dtype: cast floating tensors to this dtype (default: keep each tensor's dtype).
        generation_config: extra or overriding ``generation_config.json`` entries.

    Returns:
        The folder written.
    """
    out = Path(os.fspath(out_dir)).expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        tensors = _dedupe_tied(state_dict)
        config = dict(hf_config)
        first_float = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
        config["dtype"] = str(dtype or first_float).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        eos: Any = config.get("eos_token_id")
        if tokenizer is not None:
            stops = stop_token_ids(tokenizer)
            eos = stops[0] if len(stops) == 1 else stops or eos
        gen = {
            "bos_token_id": config.get("bos_token_id"),
            "eos_token_id": eos,
            "pad_token_id": config.get("pad_token_id"),
        }
        gen.update(generation_config or {})
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
        _write_weights(tmp, tensors, max_shard_bytes, dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_hf(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: torch.dtype | None = None,
    generation_config: dict[str, Any] | None = None,
) -> Path:
    """Save a ``CausalLM``, ``ValueModel`` or ``HFCausalLM`` as a Hugging Face model folder.

    ``AutoModelForCausalLM.from_pretrained`` (``AutoModelForTokenClassification`` for a value
    model) loads the result, and ``load_state_dict`` gives back bit-identical tensors (unless
    ``dtype`` casts them). See ``write_hf_folder`` for the arguments.
    """
    to_hf = getattr(model, "hf_config_dict", None)
    hf_config = to_hf() if callable(to_hf) else model.config.to_hf()  # type: ignore[union-attr,operator]
    state_dict = getattr(model, "hf_state_dict", model.state_dict)()
    return write_hf_folder(
        out_dir,
        hf_config,
        state_dict,
        tokenizer=tokenizer,
        max_shard_bytes=max_shard_bytes,
        dtype=dtype,
        generation_config=generation_config,
    )
