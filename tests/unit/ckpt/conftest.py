"""Real checkpoints written in-process: a tiny actor (and critic) on a single-process group, no Ray."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist

from rlkit.ckpt import capture_rng, save_checkpoint, save_role_state, save_worker_rng
from rlkit.models import build_tokenizer
from rlkit.training import ActorRole, CriticRole
from rlkit.training.distributed import ensure_process_group

CONFIG: dict[str, Any] = {
    "recipe": "grpo",
    "model": {"path": "builtin:tiny"},
    "actor": {"lr": 1e-3},
    "trainer": {"seed": 1, "total_steps": 10},
}


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """A single-process gloo group for the module; torn down so other test modules start clean."""
    created = not dist.is_initialized()
    ensure_process_group()
    yield
    if created and dist.is_initialized():
        dist.destroy_process_group()


def trained_step(role: Any, seed: int) -> None:
    """One optimizer and scheduler step on a seed-dependent quadratic loss (non-trivial optimizer state)."""
    loss = sum((p * p).sum() * (1.0 + 0.1 * ((i + seed) % 7)) for i, p in enumerate(role.engine.params))
    loss.backward()  # type: ignore[union-attr]
    role.engine.optimizer_step()
    role.engine.scheduler_step()


def make_actor(seed: int = 0, model_path: str = "builtin:tiny") -> ActorRole:
    return ActorRole(model_path, total_steps=10, lr=1e-3, seed=seed)


def make_critic(seed: int = 0) -> CriticRole:
    return CriticRole("builtin:tiny", total_steps=10, lr=1e-3, seed=seed)


def write_checkpoint(run_dir: Path, step: int, roles: dict[str, Any], keep_last: int = 0) -> Path:
    """A complete checkpoint through the real driver function, the roles saved in this process."""

    def write_roles(folder: Path) -> None:
        for name, role in roles.items():
            save_role_state(role, folder / name)
        save_worker_rng(folder, 0)

    state = {"sampler": {"epoch": 0, "position": step}, "kl_ctrl": {"value": 0.001}, "rng": capture_rng()}
    return save_checkpoint(
        run_dir,
        step,
        trainer_state=state,
        config=CONFIG,
        tokenizer=build_tokenizer(),
        roles=list(roles),
        world_size=1,
        write_roles=write_roles,
        keep_last=keep_last,
    )


@pytest.fixture(scope="module")
def actor(process_group: None) -> ActorRole:
    role = make_actor(seed=0)
    trained_step(role, seed=0)
    return role
