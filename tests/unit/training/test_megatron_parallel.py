"""Megatron's tensor parallelism (TP=2) and data parallelism (DP=2) on the CPU: two gloo processes.

The actor and the critic (``critic.strategy=megatron``) of one process share its Megatron layout.

Each process gets its own half of the batch, as the controller deals it. Log-probs, the update's
metrics and the updated weights must equal one process with the whole batch (TP=1): with TP=2
the two ranks join their halves and compute on the same rows (``replica_batch``), the LM head is
vocab-parallel, and the weights come back gathered into Hugging Face names. Skips without
megatron-core. TP=2 runs in the default run (about 12 s: two processes start Megatron); DP=2,
whose path is the plain gradient average, is marked slow.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("megatron.core")

from rlkit.training.actor import ActorRole  # noqa: E402
from rlkit.training.critic import CriticRole  # noqa: E402

from ._builders import rl_batch  # noqa: E402
from .megatron_cpu import megatron_on_cpu, reset_megatron  # noqa: E402

pytestmark = pytest.mark.usefixtures("process_group")

P, R = 6, 5
PROMPTS = [6, 3, 5, 1, 4, 6, 2, 5]
RESPONSES = [5, 2, 4, 5, 1, 3, 5, 2]
# two optimizer steps; one mini-batch, since DP ranks cut their own rows into mini-batches
UPDATE = {"loss_agg_mode": "seq-mean-token-mean", "entropy_coeff": 0.01, "epochs": 2}


def _run(path: str, tensor_parallel: int, rank: int, world: int) -> dict[str, object]:
    """The actor's log-probs of this rank's rows, an update of them and its gathered weights; the
    critic's values, an update and its weights."""
    actor = _actor(path, tensor_parallel)
    full = rl_batch(PROMPTS, RESPONSES, P, R, seed=1)
    full.set("returns", torch.linspace(-1.0, 1.0, len(full))[:, None] * full["response_mask"])
    batch = full.chunk(world)[rank]
    out = actor.compute_log_prob(batch)
    batch.set("old_log_probs", out["old_log_probs"] - 0.05)  # a ratio away from 1: the clip engages
    metrics = actor.update(batch, **UPDATE)
    weights = {k: v.clone() for k, v in actor.named_full_tensors(torch.float32)}
    critic = CriticRole(
        path,
        lr=1e-3,
        total_steps=10,
        micro_batch_tokens=40,
        strategy="megatron",
        megatron={"tensor_parallel": tensor_parallel},
    )
    values = critic.compute_values(batch)["values"]
    batch.set("values", values)
    metrics.update(critic.update(batch))
    weights.update({f"critic.{k}": v.clone() for k, v in critic.named_full_tensors(torch.float32)})
    return {
        "logp": out["old_log_probs"],
        "entropy": out["entropy"],
        "values": values,
        "metrics": metrics,
        "weights": weights,
    }


def _actor(path: str, tensor_parallel: int) -> ActorRole:
    return ActorRole(
        path,
        lr=1e-3,
        total_steps=10,
        micro_batch_tokens=40,
        logprob_chunk_tokens=7,
        grad_clip=0.5,
        strategy="megatron",
        megatron={"tensor_parallel": tensor_parallel},
    )


def _worker(rank: int, world: int, path: str, out_dir: str, tensor_parallel: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    try:
        with megatron_on_cpu():
            result = _run(path, tensor_parallel, rank, world)
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("tensor_parallel", [2, pytest.param(1, marks=pytest.mark.slow)], ids=["tp2", "dp2"])
def test_two_ranks_equal_one(tiny_model_dir: Path, tmp_path: Path, tensor_parallel: int) -> None:
    with megatron_on_cpu():
        expected = _run(str(tiny_model_dir), 1, 0, 1)
    reset_megatron()
    env = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK") if k in os.environ}
    try:
        mp.spawn(_worker, args=(2, str(tiny_model_dir), str(tmp_path), tensor_parallel), nprocs=2)
    finally:
        os.environ.update(env)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key in ("logp", "entropy", "values"):
        joined = torch.cat([r[key] for r in ranks])  # type: ignore[misc]
        torch.testing.assert_close(joined, expected[key], atol=1e-5, rtol=1e-5)
    for rank in ranks:
        for key in (
            "actor/pg_loss",
            "actor/entropy",
            "actor/grad_norm",
            "actor/pg_clipfrac",
            "critic/vf_loss",
            "critic/grad_norm",
        ):
            assert rank["metrics"][key] == pytest.approx(expected["metrics"][key], rel=1e-4, abs=1e-6), key  # type: ignore[index]
        for name, tensor in expected["weights"].items():  # type: ignore[union-attr]
            torch.testing.assert_close(rank["weights"][name], tensor, atol=1e-5, rtol=1e-4, msg=name)  # type: ignore[index]
