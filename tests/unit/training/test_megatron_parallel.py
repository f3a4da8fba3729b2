"""Megatron's tensor (TP, with sequence parallelism), pipeline (PP), context (CP) and data
parallelism (DP) on the CPU: gloo processes.

The actor, the critic (``critic.strategy=megatron``) and the reference (``ref.strategy=megatron``)
of one process share its Megatron layout.

Each process gets its own share of the batch, as the controller deals it. Log-probs, the update's
metrics and the updated weights must equal one process with the whole batch: the ranks of one
model replica (TP x PP x CP) join their shares and compute on the same rows (``replica_batch``);
with TP = 2 the LM head is vocab-parallel, and a Qwen3's q / k norms (one weight over each rank's
heads) sum their gradients over TP, as every norm does under sequence parallelism; with CP = 2
each rank holds two of four chunks of every row and attends over the gathered keys; with PP = 2
the micro-batches run through Megatron's 1F1B schedule, the last stage computes the losses and
holds a copy of the tied embedding as its LM head, and the weights come back gathered over the
stages into Hugging Face names. A checkpoint of two stages, or of two replicas (or two CP ranks)
sharing the Adam states, resumes exactly and merges to the exported model. Skips without
megatron-core. Two-process cases run in the default run (about 5 s each); DP = 2, whose path is
the plain gradient average, and the four-process ones are marked slow. On a machine with two
GPUs, ``test_two_gpus_equal_one`` (``gpu``) runs TP, SP, CP, PP and PP x VPP over NCCL with
Megatron unpatched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("megatron.core")

from rlkit.data.batch import Batch  # noqa: E402
from rlkit.training.actor import ActorRole  # noqa: E402
from rlkit.training.critic import CriticRole  # noqa: E402
from rlkit.training.ref import RefRole  # noqa: E402

from ._builders import rl_batch, tiny_decoder_config  # noqa: E402
from .megatron_cpu import megatron_on_cpu, reset_megatron  # noqa: E402

pytestmark = pytest.mark.usefixtures("process_group")

P, R = 6, 5
PROMPTS = [6, 3, 5, 1, 4, 6, 2, 5]
RESPONSES = [5, 2, 4, 5, 1, 3, 5, 2]
# two optimizer steps; one mini-batch, since DP ranks cut their own rows into mini-batches
UPDATE = {"loss_agg_mode": "seq-mean-token-mean", "entropy_coeff": 0.01, "epochs": 2}


def _run(path: str, sizes: dict[str, int], rank: int, world: int, dtype: str = "auto") -> dict[str, object]:
    """The actor's log-probs of this rank's rows, an update of them and its gathered weights; the
    critic's values, an update and its weights; the reference's log-probs."""
    actor = _actor(path, sizes, dtype=dtype)
    full = rl_batch(PROMPTS, RESPONSES, P, R, seed=1)
    full.set("returns", torch.linspace(-1.0, 1.0, len(full))[:, None] * full["response_mask"])
    batch = full.chunk(world)[rank]
    out = actor.compute_log_prob(batch)
    batch.set("old_log_probs", out["old_log_probs"] - 0.05)  # a ratio away from 1: the clip engages
    metrics = actor.update(batch, **UPDATE)
    weights = {k: v.cpu().clone() for k, v in actor.named_full_tensors(torch.float32)}
    again = {k: v.cpu() for k, v in actor.named_full_tensors(torch.float32)}  # stage shapes now known
    assert again.keys() == weights.keys() and all(torch.equal(again[k], w) for k, w in weights.items())
    critic = CriticRole(
        path,
        lr=1e-3,
        total_steps=10,
        micro_batch_tokens=40,
        strategy="megatron",
        megatron=sizes,
        dtype=dtype,
    )
    ref = RefRole(
        path, micro_batch_tokens=40, logprob_chunk_tokens=7, strategy="megatron", megatron=sizes, dtype=dtype
    )
    ref_logp = ref.compute_ref_log_prob(batch)["ref_log_prob"]
    values = critic.compute_values(batch)["values"]
    batch.set("values", values)
    metrics.update(critic.update(batch))
    weights.update({f"critic.{k}": v.cpu() for k, v in critic.named_full_tensors(torch.float32)})
    # an on-policy update keeps its forward's log-probs: what the old-log-prob pass gives
    on_policy = full.chunk(world)[rank]
    recomputed = actor.compute_log_prob(on_policy, with_entropy=False)["old_log_probs"]
    kept = actor.update_on_policy(on_policy, loss_agg_mode="seq-mean-token-mean")["old_log_probs"]
    engine = actor.engine
    return {
        "adam_share": sum(p.numel() for g in engine.optimizer.param_groups for p in g["params"])
        / sum(p.numel() for p in engine.params),
        "logp": out["old_log_probs"],
        "entropy": out["entropy"],
        "values": values,
        "ref": ref_logp,
        "recomputed": recomputed,
        "kept": kept,
        "metrics": metrics,
        "weights": weights,
    }


def _actor(path: str, sizes: dict[str, int], dtype: str = "auto") -> ActorRole:
    return ActorRole(
        path,
        lr=1e-3,
        total_steps=10,
        micro_batch_tokens=40,
        logprob_chunk_tokens=7,
        grad_clip=0.5,
        strategy="megatron",
        megatron=sizes,
        dtype=dtype,
    )


def _worker(rank: int, world: int, path: str, out_dir: str, sizes: dict[str, int]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    try:
        with megatron_on_cpu():
            result = _run(path, sizes, rank, world)
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def four_layer_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with four layers: two pipeline stages of two model chunks each."""
    return _save_tiny(tmp_path_factory, "tiny_lm_4", num_layers=4)


@pytest.fixture(scope="module")
def qwen3_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a Qwen3: q / k norms, whose weight each TP rank applies to its own heads."""
    return _save_tiny(
        tmp_path_factory, "tiny_qwen3", architecture="qwen3", qk_norm=True, attention_bias=False
    )


def _save_tiny(factory: pytest.TempPathFactory, name: str, **changes: object) -> Path:
    from dataclasses import replace

    from rlkit.models import CausalLM, init_weights, save_hf

    model = CausalLM(replace(tiny_decoder_config(), **changes))
    init_weights(model, seed=0)
    out = factory.mktemp(name)
    save_hf(model, out)
    return out


@pytest.mark.parametrize(
    ("sizes", "model"),
    [
        ({"tensor_parallel": 2}, "tiny"),
        ({"tensor_parallel": 2}, "qwen3"),
        ({"tensor_parallel": 2, "sequence_parallel": True}, "tiny"),
        ({"context_parallel": 2}, "tiny"),
        ({"pipeline_parallel": 2}, "tiny"),
        ({"pipeline_parallel": 2, "virtual_pipeline": 2}, "four_layer"),
        ({"distributed_optimizer": True}, "tiny"),
        pytest.param({}, "tiny", marks=pytest.mark.slow),
        pytest.param({"tensor_parallel": 2, "pipeline_parallel": 2}, "tiny", marks=pytest.mark.slow),
        pytest.param(
            {"tensor_parallel": 2, "context_parallel": 2, "sequence_parallel": True},
            "qwen3",
            marks=pytest.mark.slow,
        ),
        pytest.param({"pipeline_parallel": 2, "context_parallel": 2}, "tiny", marks=pytest.mark.slow),
        pytest.param(
            {"pipeline_parallel": 2, "virtual_pipeline": 2, "context_parallel": 2},
            "four_layer",
            marks=pytest.mark.slow,
        ),
    ],
    ids=[
        "tp2",
        "tp2-qwen3",
        "tp2-sp",
        "cp2",
        "pp2",
        "pp2-vpp2",
        "dp2-distributed-optimizer",
        "dp2",
        "tp2-pp2",
        "tp2-cp2-sp-qwen3",
        "pp2-cp2",
        "pp2-vpp2-cp2",
    ],
)
def test_ranks_equal_one_process(
    request: pytest.FixtureRequest, tmp_path: Path, sizes: dict[str, int], model: str
) -> None:
    world = max(2, _replica_ranks(sizes))
    path = str(request.getfixturevalue(f"{model}_model_dir"))
    with megatron_on_cpu():
        expected = _run(path, {}, 0, 1)
    reset_megatron()
    env = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK") if k in os.environ}
    try:
        mp.spawn(_worker, args=(world, path, str(tmp_path), sizes), nprocs=world)
    finally:
        os.environ.update(env)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    _assert_equal(ranks, expected)
    if sizes.get("distributed_optimizer"):  # each replica's AdamW steps about half the weights
        shares = [r["adam_share"] for r in ranks]
        assert sum(shares) == pytest.approx(1.0) and max(shares) < 0.75, shares


def _replica_ranks(sizes: dict[str, int]) -> int:
    return (
        sizes.get("tensor_parallel", 1) * sizes.get("pipeline_parallel", 1) * sizes.get("context_parallel", 1)
    )


def _assert_equal(ranks: list[dict[str, object]], expected: dict[str, object]) -> None:
    """The ranks' rows joined equal the one-process rows; every rank's metrics and weights equal its."""
    for key in ("logp", "entropy", "values", "ref", "kept"):
        joined = torch.cat([r[key] for r in ranks])  # type: ignore[misc]
        torch.testing.assert_close(joined, expected[key], atol=1e-5, rtol=1e-5)
    for result in (expected, *ranks):
        torch.testing.assert_close(result["kept"], result["recomputed"], atol=1e-5, rtol=1e-5)
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


def _gpu_worker(rank: int, world: int, path: str, out_dir: str, sizes: dict[str, int]) -> None:
    os.environ["LOCAL_RANK"] = str(rank)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    try:
        torch.save(_run(path, sizes, rank, world, dtype="float32"), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize(
    "sizes",
    [
        {"tensor_parallel": 2},
        {"tensor_parallel": 2, "sequence_parallel": True},
        {"context_parallel": 2},
        {"pipeline_parallel": 2},
        {"pipeline_parallel": 2, "virtual_pipeline": 2},
    ],
    ids=["tp2", "tp2-sp", "cp2", "pp2", "pp2-vpp2"],
)
def test_two_gpus_equal_one(
    tiny_model_dir: Path, four_layer_model_dir: Path, tmp_path: Path, sizes: dict[str, int]
) -> None:
    """The same parity over NCCL, Megatron unpatched, in fp32 (bf16 rounding would hide a wrong shard)."""
    path = str(four_layer_model_dir if sizes.get("virtual_pipeline", 1) > 1 else tiny_model_dir)
    expected = _run(path, {}, 0, 1, dtype="float32")
    reset_megatron()
    torch.cuda.empty_cache()
    env = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK") if k in os.environ}
    try:
        mp.spawn(_gpu_worker, args=(2, path, str(tmp_path), sizes), nprocs=2)
    finally:
        os.environ.update(env)
    _assert_equal([torch.load(tmp_path / f"rank{r}.pt") for r in range(2)], expected)


def _off_policy_batch(seed: int) -> Batch:
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=seed)
    batch.set("old_log_probs", torch.full((len(batch), R), -3.0))
    return batch


def _resume(path: str, sizes: dict[str, int], rank: int, world: int, ckpt: Path) -> dict[str, object]:
    """One update, a checkpoint, a fresh actor resumed from it, a second update; and the merge."""
    from rlkit.ckpt import load_role_state, save_role_state
    from rlkit.ckpt.dcp_io import load_full_tensors
    from rlkit.ckpt.layout import DCP_DIR
    from rlkit.training.megatron_convert import checkpoint_to_hf

    first, second = (_off_policy_batch(s).chunk(world)[rank] for s in (3, 4))
    interrupted = _actor(path, sizes)
    interrupted.update(first, **UPDATE)
    save_role_state(interrupted, ckpt)
    dist.barrier()
    merged = checkpoint_to_hf(load_full_tensors(ckpt / DCP_DIR, "model."), interrupted.hf_config)
    saved = {k: v.clone() for k, v in interrupted.named_full_tensors(torch.float32)}
    resumed = _actor(path, sizes)
    problem = load_role_state(resumed, ckpt)
    assert problem is None, problem
    metrics = resumed.update(second, **UPDATE)
    weights = {k: v.clone() for k, v in resumed.named_full_tensors(torch.float32)}
    return {"merged": merged, "saved": saved, "metrics": metrics, "weights": weights}


def _resume_worker(rank: int, world: int, path: str, out_dir: str, sizes: dict[str, int]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    try:
        with megatron_on_cpu():
            result = _resume(path, sizes, rank, world, Path(out_dir) / "actor")
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "sizes",
    [
        {"pipeline_parallel": 2},
        {"distributed_optimizer": True},
        {"context_parallel": 2, "distributed_optimizer": True},
    ],
    ids=["pp2", "dp2-distributed-optimizer", "cp2-distributed-optimizer"],
)
def test_two_ranks_resume_exactly_and_merge(
    tiny_model_dir: Path, tmp_path: Path, sizes: dict[str, int]
) -> None:
    """PP = 2: the checkpoint holds both stages (and the last stage's copy of the tied embedding);
    DP = 2 with the distributed optimizer: each replica's share of the Adam states (CP = 2: the two
    context-parallel ranks hold one replica's weights and share its Adam states). A resumed pair
    of ranks continues as one process that never stopped, and the merged checkpoint is the
    exported model."""
    with megatron_on_cpu():
        straight = _actor(str(tiny_model_dir), {})
        for seed in (3, 4):
            metrics = straight.update(_off_policy_batch(seed), **UPDATE)
        expected = {k: v.clone() for k, v in straight.named_full_tensors(torch.float32)}
    reset_megatron()
    env = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK") if k in os.environ}
    try:
        mp.spawn(_resume_worker, args=(2, str(tiny_model_dir), str(tmp_path), sizes), nprocs=2)
    finally:
        os.environ.update(env)
    for rank in (torch.load(tmp_path / f"rank{r}.pt") for r in range(2)):
        assert rank["merged"].keys() == rank["saved"].keys()  # type: ignore[union-attr]
        for name, tensor in rank["saved"].items():  # type: ignore[union-attr]
            torch.testing.assert_close(rank["merged"][name], tensor, atol=0, rtol=0, msg=name)  # type: ignore[index]
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
            assert rank["metrics"][key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-6), key  # type: ignore[index]
        for name, tensor in expected.items():
            torch.testing.assert_close(rank["weights"][name], tensor, atol=1e-5, rtol=1e-4, msg=name)  # type: ignore[index]
