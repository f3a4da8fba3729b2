"""Worker-side checkpoint state: a trained role's model, optimizer and schedule, and process RNG states.

Runs inside each worker process (all ranks together). A role is anything with the engine's
checkpoint interface (``ActorRole``, ``CriticRole``, ``SFTRole``)::

    state_dict_for_checkpoint() -> {"model", "optimizer": {"state", "param_groups"}, "scheduler", "counters"}
    load_checkpoint_state(state)

Tensors (model and optimizer state, sharded DTensors) go to DCP; everything else (optimizer
param groups, the LR schedule, counters, the model's HF ``config.json``, LoRA settings) goes to
``state.json``, written by rank 0. RNG states are JSON too (byte states base64-encoded): nothing
in a checkpoint is a pickle.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from rlkit.ckpt.dcp_io import load_state, save_state
from rlkit.ckpt.layout import DCP_DIR, RNG_DIR, ROLE_HF_CONFIG, ROLE_STATE, read_json, write_json
from rlkit.hardware import device as hw

# Optimizer param-group entries that must come back as tuples (JSON has only lists).
_TUPLE_KEYS = ("betas",)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def role_hf_config(role: Any) -> dict[str, Any]:
    """The Hugging Face ``config.json`` of a role's model (before any LoRA adapters)."""
    explicit = getattr(role, "hf_config", None)
    if isinstance(explicit, dict):
        return dict(explicit)
    return _module_hf_config(role.engine.module)


def _module_hf_config(module: Any) -> dict[str, Any]:
    inner = module.inner  # the model a root module of rlkit.training.heads wraps
    to_hf = getattr(inner, "hf_config_dict", None)
    return dict(to_hf() if callable(to_hf) else inner.config.to_hf())


def role_lora(role: Any) -> dict[str, Any] | None:
    """LoRA settings of a role that has adapters (``SFTRole`` or ``ActorRole`` with ``lora_rank`` > 0), else None."""
    rank = int(getattr(role, "lora_rank", 0) or 0)
    if rank <= 0:
        return None
    return {
        "rank": rank,
        "alpha": role.lora_alpha,
        "target_modules": list(role.lora_targets),
    }


def _split(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's checkpoint state -> (DCP tensors, JSON-able rest)."""
    optimizer = state["optimizer"]
    tensors = {"model": state["model"], "optim": optimizer["state"]}
    rest = {
        "param_groups": optimizer["param_groups"],
        "scheduler": state["scheduler"],
        "counters": state.get("counters", {}),
    }
    return tensors, rest


def save_role_state(role: Any, role_dir: Path) -> None:
    """Write a role's sharded model and optimizer (DCP, every rank) and its ``state.json`` (rank 0).

    Collective: every rank of the role's group calls it with the same folder.
    """
    tensors, rest = _split(role.state_dict_for_checkpoint())
    save_state(tensors, role_dir / DCP_DIR)
    if _rank() == 0:
        rest["lora"] = role_lora(role)
        write_json(role_dir / ROLE_STATE, rest)
        write_json(role_dir / ROLE_HF_CONFIG, role_hf_config(role))


def _restore_tuples(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for group in groups:
        for key in _TUPLE_KEYS:
            if isinstance(group.get(key), list):
                group[key] = tuple(group[key])
    return groups


def load_role_state(role: Any, role_dir: Path) -> str | None:
    """Restore a role from ``role_dir`` (collective); reshards when the world size changed.

    Returns:
        None on success, else what is wrong (naming the file); every rank returns the same
        problem and none has changed its role.
    """
    try:
        rest = read_json(role_dir / ROLE_STATE)
    except Exception as exc:  # a UserError naming the file
        return str(exc)
    live = role.state_dict_for_checkpoint()
    tensors, _ = _split(live)
    problem = load_state(tensors, role_dir / DCP_DIR)
    if problem is not None:
        return problem
    saved_groups = _restore_tuples(rest["param_groups"])
    live_groups = live["optimizer"]["param_groups"]
    if len(saved_groups) != len(live_groups):
        return (
            f"{role_dir / ROLE_STATE}: {len(saved_groups)} optimizer param groups, "
            f"this run has {len(live_groups)}"
        )
    live["optimizer"]["param_groups"] = saved_groups
    live["scheduler"] = rest["scheduler"]
    live["counters"] = rest.get("counters", {})
    role.load_checkpoint_state(live)
    return None


def save_frozen_role(module: torch.nn.Module, role_dir: Path) -> None:
    """Write the weights of a role without an optimizer (a reference model that ``ref.update_every``
    refreshes during training): DCP model tensors plus a ``state.json`` that says it is frozen.

    Collective: every rank of the role's group calls it with the same folder.
    """
    save_state({"model": get_model_state_dict(module)}, role_dir / DCP_DIR)
    if _rank() == 0:
        write_json(role_dir / ROLE_STATE, {"frozen": True})
        write_json(role_dir / ROLE_HF_CONFIG, _module_hf_config(module))


def load_frozen_role(module: torch.nn.Module, role_dir: Path) -> str | None:
    """Restore what :func:`save_frozen_role` wrote (collective; reshards to this world size).

    Returns:
        None on success, else what is wrong (naming the file); no rank has changed its module then.
    """
    state = {"model": get_model_state_dict(module)}
    problem = load_state(state, role_dir / DCP_DIR)
    if problem is not None:
        return problem
    set_model_state_dict(module, state["model"])
    return None


def save_frozen_tensors(tensors: dict[str, torch.Tensor], hf_config: dict[str, Any], role_dir: Path) -> None:
    """:func:`save_frozen_role` for an engine that names its own tensors (the Megatron reference:
    per-shard names, unique over ranks); collective."""
    save_state({"model": tensors}, role_dir / DCP_DIR)
    if _rank() == 0:
        write_json(role_dir / ROLE_STATE, {"frozen": True})
        write_json(role_dir / ROLE_HF_CONFIG, dict(hf_config))


def load_frozen_tensors(tensors: dict[str, torch.Tensor], role_dir: Path) -> str | None:
    """Fill ``tensors`` in place from what :func:`save_frozen_tensors` wrote (collective).

    Returns:
        None on success, else what is wrong (naming the file).
    """
    return load_state({"model": tensors}, role_dir / DCP_DIR)


# ---------------------------------------------------------------------------------- RNG states


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng() -> dict[str, Any]:
    """This process's torch CPU, device, numpy and python ``random`` states, as JSON-able data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    device_state = hw.rng_state()
    return {
        "torch_cpu": _b64(torch.get_rng_state()),
        "device_type": hw.device_type(),
        "device": _b64(device_state) if device_state is not None else None,
        "numpy": {
            "kind": kind,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restore :func:`capture_rng` output; the device state only on the same kind of device."""
    torch.set_rng_state(_unb64(state["torch_cpu"]))
    if state.get("device") is not None and state.get("device_type") == hw.device_type():
        hw.set_rng_state(_unb64(state["device"]))
    n = state["numpy"]
    keys = np.array(n["keys"], dtype=np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def save_worker_rng(step_dir: Path, rank: int) -> None:
    """Write this worker process's RNG states to ``rng/rank_<rank>.json``."""
    folder = step_dir / RNG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"rank_{rank}.json", capture_rng())


def load_worker_rng(step_dir: Path, rank: int) -> bool:
    """Restore this worker's RNG states if the checkpoint has a file for its rank.

    A checkpoint written by fewer workers has no state for the extra ranks: they keep the
    states their roles were seeded with (see docs/checkpoints.md).

    Returns:
        Whether a state was restored.
    """
    path = step_dir / RNG_DIR / f"rank_{rank}.json"
    if not path.is_file():
        return False
    restore_rng(read_json(path))
    return True
