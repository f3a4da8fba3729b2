"""Two FSDP2 workers (gloo, CPU) train exactly like one: same losses, norms, values and weights.

Two spawned processes form a 2-worker group; the test process itself is the 1-worker reference
(a single-process group, torn down afterwards). All build the same tiny checkpoint and the same batch; the 2-worker ranks each take
half the rows, with token budgets that give them different numbers of micro-batches (so the
padding micro-batches that keep collectives in step are exercised).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

P, R, VOCAB = 6, 5, 300
# Rows 0-3 (rank 0) are long, rows 4-7 (rank 1) short: 4 micro-batches vs 1 under a 16-token budget.
PROMPTS = [6, 5, 6, 4, 1, 2, 1, 2]
RESPONSES = [5, 5, 4, 5, 2, 2, 3, 1]
BUDGET = 16


def _batch():  # noqa: ANN202 - built inside the workers too
    from rlkit.data.batch import Batch

    gen = torch.Generator().manual_seed(0)
    b = len(PROMPTS)
    prompts = torch.zeros(b, P, dtype=torch.long)
    responses = torch.zeros(b, R, dtype=torch.long)
    for i, (pl, rl) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        prompts[i, P - pl :] = torch.randint(3, VOCAB, (pl,), generator=gen)
        responses[i, :rl] = torch.randint(3, VOCAB, (rl,), generator=gen)
    attention_mask = torch.cat([prompts != 0, responses != 0], dim=1).long()
    response_mask = (responses != 0).float()
    advantages = torch.randn(b, 1, generator=gen) * response_mask
    return Batch(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "response_mask": response_mask,
            "advantages": advantages,
            "ref_log_prob": torch.full((b, R), -4.0),
            "returns": torch.linspace(-1, 1, b)[:, None] * response_mask,
        },
        meta={"temperature": 0.9},
    )


def _train(model_dir: str, rank: int, world: int) -> dict[str, object]:
    from rlkit.training.actor import ActorRole
    from rlkit.training.critic import CriticRole

    local = _batch().chunk(world)[rank]
    actor = ActorRole(model_dir, lr=1e-3, total_steps=10, grad_clip=0.5, micro_batch_tokens=BUDGET)
    old = actor.compute_log_prob(local)
    local.set("old_log_probs", old["old_log_probs"])
    actor_metrics = actor.update(
        local,
        epochs=2,
        use_kl_loss=True,
        kl_loss_coef=0.1,
        entropy_coeff=0.01,
        loss_agg_mode="seq-mean-token-mean",
    )
    actor_params = {k: v.clone() for k, v in actor.named_full_tensors(torch.float32)}
    critic = CriticRole(model_dir, lr=1e-2, total_steps=10, micro_batch_tokens=BUDGET)
    values = critic.compute_values(local)["values"]
    local.set("values", values)
    critic_metrics = critic.update(local, epochs=2)
    return {
        "old_log_probs": old["old_log_probs"],
        "entropy": old["entropy"],
        "values": values,
        "actor": actor_metrics,
        "critic": critic_metrics,
        "params": actor_params,
    }


def _worker(rank: int, tmp: str, model_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)})
    store = f"file://{tmp}/store"
    dist.init_process_group(
        "gloo", init_method=store, rank=rank, world_size=2, timeout=timedelta(seconds=120)
    )
    try:
        torch.save(_train(model_dir, rank, 2), f"{tmp}/out_2_{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # The results are on disk: leave without interpreter finalisation. Gloo's C++ threads can still
    # hold work objects then (pytorch/pytorch#179291); a CI run once lost a worker to SIGABRT
    # ("terminate called without an active exception", no Python error), which is that symptom.
    os._exit(0)


def _single_worker(model_dir: str) -> dict[str, object]:
    from rlkit.training.distributed import ensure_process_group

    assert not dist.is_initialized(), "another test left a process group behind"
    ensure_process_group()
    try:
        return _train(model_dir, 0, 1)
    finally:
        dist.destroy_process_group()


def _run(tmp: Path, model_dir: Path, timeout_s: float = 240.0) -> dict[str, object]:
    """Start the 2-worker group, compute the 1-worker reference meanwhile, then wait for the group."""
    ctx = mp.start_processes(
        _worker, args=(str(tmp), str(model_dir)), nprocs=2, join=False, start_method="spawn"
    )
    try:
        single = _single_worker(str(model_dir))
    finally:
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.kill()
                pytest.fail(f"FSDP workers did not finish within {timeout_s} s")
    return single


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    from rlkit.models import CausalLM, init_weights, save_hf
    from rlkit.models.shapes import TINY

    tmp = tmp_path_factory.mktemp("fsdp")
    cfg = replace(TINY, vocab_size=VOCAB)
    model = CausalLM(cfg)
    init_weights(model, seed=0)
    save_hf(model, tmp / "model")
    single = _run(tmp, tmp / "model")
    return {"1_0": single, **{name: torch.load(tmp / f"out_{name}.pt") for name in ("2_0", "2_1")}}


def test_two_workers_compute_the_same_log_probs_and_values(results: dict[str, dict[str, object]]) -> None:
    one, r0, r1 = results["1_0"], results["2_0"], results["2_1"]
    for key in ("old_log_probs", "entropy", "values"):
        both = torch.cat([r0[key], r1[key]])  # type: ignore[list-item]
        torch.testing.assert_close(both, one[key], atol=1e-5, rtol=1e-5)


def test_two_workers_update_like_one(results: dict[str, dict[str, object]]) -> None:
    one, r0, r1 = results["1_0"], results["2_0"], results["2_1"]
    for role in ("actor", "critic"):
        single, m0, m1 = one[role], r0[role], r1[role]
        assert m0 == m1, f"{role} metrics differ between ranks"  # reduced over ranks: identical
        for key, value in single.items():  # type: ignore[union-attr]
            assert m0[key] == pytest.approx(value, rel=1e-5, abs=1e-6), f"{role} {key}"  # type: ignore[index]
    assert one["actor"]["actor/grad_norm"] > 0.5  # type: ignore[index]  # clipping was active
    for name, value in one["params"].items():  # type: ignore[union-attr]
        torch.testing.assert_close(r0["params"][name], value, atol=1e-5, rtol=1e-5)  # type: ignore[index]
        torch.testing.assert_close(r1["params"][name], r0["params"][name], atol=0, rtol=0)  # type: ignore[index]
